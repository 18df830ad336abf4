"""Debian's chromium driven by Playwright, against JupyterLab from `loquilex_nb.testing.jupyter`:
the helpers of the browser tests and of bench/labext.py."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import wave
from pathlib import Path
from typing import Iterator

from loquilex_nb.core.config import build_config
from loquilex_nb.core.events import REVISION_WINDOW_S
from loquilex_nb.supervisor.supervisor import Supervisor
from loquilex_nb.testing.jupyter import JupyterServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
NO_NEWS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"}}  # no news toast


@contextlib.contextmanager
def jupyter_lab(home: Path, *args: str, timeout: float = 90, settings: dict | None = None) -> Iterator[JupyterServer]:
    """JupyterLab with the loquilex extensions, in its own dirs under `home`; stopped on exit."""
    lab = JupyterServer(home, lab=True, args=args, settings={**NO_NEWS, **(settings or {})})
    try:
        yield lab.start(timeout)
    finally:
        if lab.proc is not None and lab.proc.poll() is None:
            lab.stop()  # SIGTERM: JupyterLab shuts its kernels down
        lab.close()


def fake_mic_wav(src: Path, dst: Path, lead: float = 1.5, tail: float = 2.0) -> float:
    """A 44.1 kHz stereo WAV of a 16 kHz mono fixture (what Chromium's fake mic reports); its seconds."""
    import av
    import numpy as np

    with wave.open(str(src)) as w:
        assert w.getframerate() == 16000 and w.getnchannels() == 1
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    pcm = np.concatenate([np.zeros(int(lead * 16000), "<i2"), pcm, np.zeros(int(tail * 16000), "<i2")])
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 16000
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=44100)
    out = [f.to_ndarray() for f in resampler.resample(frame)] + [f.to_ndarray() for f in resampler.resample(None)]
    stereo = np.concatenate(out, axis=1).reshape(-1)  # packed s16: L R L R
    with wave.open(str(dst), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(stereo.astype("<i2").tobytes())
    return len(pcm) / 16000


def launch_chromium(playwright, *extra: str):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def open_sidebar(page, lab: JupyterServer) -> None:
    """Load JupyterLab and show the Captions sidebar (it may already be open: openOnStart)."""
    page.goto(lab.lab_url())
    tab = ".jp-SideBar [data-id='loquilex-sidebar']"
    page.wait_for_selector(tab, timeout=90_000)
    time.sleep(0.5)
    if not page.is_visible("#loquilex-sidebar button.lx-mic"):
        page.click(tab)
    page.wait_for_selector("#loquilex-sidebar .lx-counter[data-counter='fds']", timeout=30_000)


def run_from_palette(page, label: str, attempts: int = 3) -> None:
    """Run a command the way a keyboard user does: Ctrl+Shift+C, type its label, Enter.

    The modal palette closes when it loses focus, and JupyterLab still restoring its layout on a
    loaded machine can take the focus just after the palette opened: the keystrokes are then
    lost. That is the harness racing the page, not the command failing, so it tries again."""
    active = f".lm-CommandPalette-item.lm-mod-active:has-text('{label}')"
    for attempt in range(1, attempts + 1):
        page.keyboard.press("Control+Shift+C")
        try:
            page.wait_for_selector(".lm-CommandPalette-input:focus", timeout=20_000)
            page.keyboard.type(label)
            page.wait_for_selector(active, timeout=10_000)
        except Exception:
            if attempt == attempts:
                raise
            page.keyboard.press("Escape")
            time.sleep(1.0)
            continue
        page.keyboard.press("Enter")
        return


def batch_text(wav: Path, output_root: Path) -> str:
    """The same audio through a session as fast as it decodes: the reference for WER."""
    return asyncio.run(_batch_text(wav, output_root))


async def _batch_text(wav: Path, output_root: Path) -> str:
    sup = Supervisor(max_sessions=1)
    try:
        session = await sup.create(build_config(str(wav), sid="batch", realtime=False, output_root=output_root))
        await session.wait()
        return " ".join(e.text for e in session.log if e.type == "asr.final")
    finally:
        await sup.shutdown()


def wait_for_revisions(started: float, last_t1: float, lag: float) -> None:
    """Wait until every final up to `last_t1` (seconds of audio after `started`, a monotonic
    time) is revised or left as it is: the revision window of audio after it, plus `lag` for a
    worker behind the clock. The microphone goes on sending silence meanwhile."""
    window = REVISION_WINDOW_S + lag
    wait_for(lambda: time.monotonic() - started > last_t1 + window, last_t1 + window + 5, "the revision window")
