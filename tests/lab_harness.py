"""A JupyterLab server and Debian's chromium for browser tests (started and stopped by the test)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = REPO / "test-output" / "browser"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Lab:
    url: str
    token: str
    proc: subprocess.Popen
    root: Path
    runtime: Path

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}{path}?token={self.token}"

    def shutdown_kernels(self) -> None:
        for k in self.api("GET", "api/kernels"):
            self.api("DELETE", f"api/kernels/{k['id']}")


@contextlib.contextmanager
def jupyter_lab(tmp_path: Path, *args: str, timeout: float = 90) -> Iterator[Lab]:
    """JupyterLab with the loquilex extensions, in its own config/runtime dirs; stopped on exit."""
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    env = dict(os.environ)
    for name in ("runtime", "config", "settings", "workspaces"):
        (tmp_path / name).mkdir(exist_ok=True)
    env.update(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        HF_HUB_OFFLINE="1",
    )
    env.pop("LOQUILEX_MODE", None)
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True, exist_ok=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news toast
    # this checkout's committed build, ahead of the copy an install put in the venv (the first
    # package.json of a name wins; its files are served from <path>/<name>): the tests see the
    # frontend they sit next to
    labextensions = tmp_path / "labextensions"
    labextensions.mkdir(exist_ok=True)
    link = labextensions / "loquilex-labextension"
    if not link.is_symlink():
        link.symlink_to(REPO / "jupyter_server_ext" / "labextension", target_is_directory=True)
    port, token = free_port(), "labext-test-token"
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         f"--LabApp.extra_labextensions_path={labextensions}", *args],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    lab = Lab(f"http://127.0.0.1:{port}/", token, proc, root, tmp_path / "runtime")
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"jupyter lab exited early:\n{(tmp_path / 'lab.log').read_text()[-3000:]}"
            try:
                lab.api("GET", "api/status", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "jupyter lab did not come up"
                time.sleep(0.3)
        yield lab
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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


def open_sidebar(page, lab: Lab) -> None:
    """Load JupyterLab and show the Captions sidebar (it may already be open: openOnStart)."""
    page.goto(lab.lab_url())
    tab = ".jp-SideBar [data-id='loquilex-sidebar']"
    page.wait_for_selector(tab, timeout=90_000)
    time.sleep(0.5)
    if not page.is_visible("#loquilex-sidebar button.lx-mic"):
        page.click(tab)
    page.wait_for_selector("#loquilex-sidebar .lx-counter[data-counter='fds']", timeout=30_000)
