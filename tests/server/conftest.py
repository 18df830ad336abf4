"""Fixtures for the server extension's tests: pytest-jupyter's in-process server (its config and
start are in tests/conftest.py) and a real `jupyter server` child process."""

import shutil

import pytest

from loquilex_nb.testing.jupyter import JupyterServer
from tests.helpers import FIXTURES


@pytest.fixture
def speech(jp_root_dir):
    shutil.copy(FIXTURES / "speech.wav", jp_root_dir / "speech.wav")
    return "speech.wav"


@pytest.fixture
def server(tmp_path):
    """`jupyter server` with only our extension, in a child process (not started yet); killed and
    reaped whatever the test did."""
    srv = JupyterServer(tmp_path, args=["--LoquilexApp.stop_grace=3", "--LoquilexApp.term_grace=2", "--debug"])
    try:
        yield srv
    finally:
        srv.close()
