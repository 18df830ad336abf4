"""Fixtures for the kernel side of server mode."""

import pytest

from loquilex_nb.backends import connect


@pytest.fixture
def server(jp_serverapp, jp_fetch, jp_root_dir):
    """pytest-jupyter's server (the extension started) as this process's backend, until the test ends."""
    backend = connect(jp_serverapp.connection_url.replace("localhost", "127.0.0.1"), jp_serverapp.identity_provider.token, root_dir=jp_root_dir, check=False)
    yield backend
    connect(None)
