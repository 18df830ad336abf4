import asyncio
import re
import time
from pathlib import Path

import psutil
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = Path(__file__).parent.parent / "loquilex_nb" / "data" / "sample.wav"


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower()).split()


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(" ".join(words(reference)), " ".join(words(hypothesis)))


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


@pytest.fixture
def output_root(tmp_path):
    return tmp_path / "captions"
