"""`jupyter server` or `jupyter lab` in a child process: the one harness of tests, bench and notebooks.

Each instance runs on a free 127.0.0.1 port with its own token and its own Jupyter dirs under
`home`, logs to a file there, and dies with the thread that started it (PR_SET_PDEATHSIG): a
test run or notebook kernel that is killed leaves no server behind. `stop()` ends it with a
signal and reaps it (SIGKILL if it does not go), then kills what it left behind and says so;
`close()` does whatever is still needed and may be called any number of times.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

# Only the loquilex server extension: starts faster, and no other extension's tasks or fds in
# the server's counters.
ONLY_LOQUILEX = (
    "--ServerApp.jpserver_extensions={'jupyter_server_ext': True, 'jupyterlab': False, 'jupyter_lsp': False, "
    "'notebook_shim': False, 'jupyter_server_terminals': False}"
)
# JupyterLab without network calls or update checks (nothing but the package registries is reachable).
QUIET_LAB = ("--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate")

# `python -m <module>`, but the parent-death signal set first. It fires when the *thread* that
# started the child ends: a kernel's main thread, pytest's, the bench's loop thread.
_DIE_WITH_PARENT = (
    "import ctypes, runpy, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0); "  # PR_SET_PDEATHSIG
    "sys.argv[0] = {name!r}; "
    "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _running(p: psutil.Process) -> bool:
    """Still running (a zombie has exited: only its parent can reap it)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class JupyterServer:
    """A `jupyter server` (``lab=False``: only our extension) or `jupyter lab` child process.

    ``args`` are added to the command line, ``env`` to the environment; ``settings`` are
    JupyterLab user settings (``{"@jupyterlab/x/y.jupyterlab-settings": {...}}``).
    """

    def __init__(self, home: str | os.PathLike, *, lab: bool = False, args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, settings: Mapping[str, dict] | None = None,
                 root: Path | None = None, log_path: Path | None = None, token: str | None = None) -> None:
        self.home = Path(home)
        self.lab = lab
        self.args = list(args)
        self.env = dict(env or {})
        self.settings = dict(settings or {})
        self.root = root or self.home / "root"
        self.log_path = log_path or self.home / ("lab.log" if lab else "server.log")
        self.port = free_port()
        self.token = token or secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        # what stop() saw: seconds from the signal to the reaped server, whether it needed
        # SIGKILL, the processes the server had started, and those still running (then killed)
        self.stop_took_s: float | None = None
        self.needed_sigkill = False
        self.stop_descendants = 0
        self.left_behind: list[int] = []
        self._log = None

    # -- the process ---------------------------------------------------------------------------
    def argv(self) -> list[str]:
        module, name = ("jupyterlab", "jupyter-lab") if self.lab else ("jupyter_server", "jupyter-server")
        argv = [sys.executable, "-c", _DIE_WITH_PARENT.format(name=name, module=module),
                "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}"]
        argv += [*QUIET_LAB, f"--LabApp.extra_labextensions_path={self._this_build()}"] if self.lab else [ONLY_LOQUILEX]
        return argv + self.args

    def _this_build(self) -> Path:
        """A labextensions dir holding this checkout's committed frontend build.

        The first package.json of a name wins, ahead of the copy an install put in the venv, so
        the browser tests see the frontend they sit next to.
        """
        labextensions = self.home / "labextensions"
        labextensions.mkdir(parents=True, exist_ok=True)
        link = labextensions / "loquilex-labextension"
        if not link.is_symlink():
            build = Path(__file__).resolve().parents[2] / "jupyter_server_ext" / "labextension"
            link.symlink_to(build, target_is_directory=True)
        return labextensions

    def dirs(self) -> dict[str, Path]:
        """Its own Jupyter dirs: nothing from the caller's config, runtime or settings leaks in."""
        names = {"JUPYTER_RUNTIME_DIR": "runtime", "JUPYTER_CONFIG_DIR": "config", "JUPYTER_DATA_DIR": "data"}
        if self.lab:
            names.update(JUPYTERLAB_SETTINGS_DIR="settings", JUPYTERLAB_WORKSPACES_DIR="workspaces")
        return {var: self.home / name for var, name in names.items()}

    def environ(self) -> dict[str, str]:
        # a server's kernels find it themselves: a mode inherited from the caller would hide it
        env = {k: v for k, v in os.environ.items() if k != "LOQUILEX_MODE"}
        env.update({var: str(path) for var, path in self.dirs().items()})
        env.update(JUPYTER_PLATFORM_DIRS="1", HF_HUB_OFFLINE="1")
        env.update(self.env)
        return env

    @property
    def runtime(self) -> Path:
        return self.home / "runtime"

    def spawn(self) -> None:
        """Start the process (not waiting for it to answer)."""
        assert self.proc is None, "started twice"
        for path in [*self.dirs().values(), self.root]:
            path.mkdir(parents=True, exist_ok=True)
        for rel, content in self.settings.items():
            path = self.home / "settings" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=self.environ(), cwd=self.root)

    def ready(self) -> bool:
        """One look: does it answer `GET /api/status`? Raises if it has exited."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"jupyter {'lab' if self.lab else 'server'} exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return self.request("GET", "api/status", timeout=2)[0] == 200
        except OSError:  # refused or timed out while it starts
            return False

    def start(self, timeout: float = 90.0) -> JupyterServer:  # a loaded shared machine can take 20-30 s
        """Spawn and wait until it answers."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter did not answer /api/status within {timeout:g} s:\n{self.log()}")
            time.sleep(0.1)
        return self

    async def astart(self, timeout: float = 90.0) -> JupyterServer:
        """`start()` for code on an event loop: the waiting does not block the loop."""
        self.spawn()
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(self.ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter did not answer /api/status within {timeout:g} s:\n{self.log()}")
            await asyncio.sleep(0.1)
        return self

    def descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children(recursive=True)
        except (psutil.Error, AttributeError):
            return []

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0, settle: float = 0.0) -> int:
        """Send `sig`, reap the server (SIGKILL after `timeout`: see `needed_sigkill`); then the
        processes it had started that still run `settle` s later go to `left_behind` and get
        SIGKILL. Returns the server's exit code."""
        assert self.proc is not None, "never started"
        kids = self.descendants()
        self.stop_descendants = len(kids)
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.needed_sigkill = True
                self.proc.kill()
                self.proc.wait()
        self.stop_took_s = time.monotonic() - t0
        deadline = time.monotonic() + settle
        while any(_running(p) for p in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in kids if _running(p)]
        self.left_behind = [p.pid for p in left]
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        self._close_log()
        return self.proc.returncode

    def close(self) -> None:
        """Whatever happened, leave no server behind (killed if running, always reaped)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop(signal.SIGKILL)
        elif self.proc is not None:
            self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- talking to it ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """(status, decoded JSON body) of one authenticated request, whatever the status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/{path.lstrip('/')}", data=data, method=method,
                                     headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read() or b"null")

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """The body of a request that must succeed (2xx)."""
        status, payload = self.request(method, path, body, timeout)
        assert 200 <= status < 300, f"{method} {path} -> {status}: {payload}"
        return payload

    def sessions(self) -> list[dict]:
        return self.api("GET", "loquilex/api/sessions")["sessions"]

    def wait_session(self, pred, timeout: float = 30.0) -> dict:
        """The first session whose info satisfies `pred`, polling `GET loquilex/api/sessions`."""
        deadline = time.monotonic() + timeout
        while True:
            found = [s for s in self.sessions() if pred(s)]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no such session within {timeout:g} s: {self.sessions()}"
            time.sleep(0.05)

    def create_push_sessions(self, n: int, running: bool = True, timeout: float = 60.0) -> list[int]:
        """n push sessions through REST; their worker pids (with `running`, once each worker runs)."""
        infos = []
        for _ in range(n):
            status, info = self.request("POST", "loquilex/api/sessions", {"source": {"kind": "push"}})
            assert status == 201, info
            infos.append(info)
        for sid in [i["id"] for i in infos] if running else []:
            self.wait_session(lambda s: s["id"] == sid and s["state"] == "running", timeout)
        return [i["pid"] for i in infos]

    def shutdown_kernels(self) -> None:
        for k in self.api("GET", "api/kernels"):
            self.request("DELETE", f"api/kernels/{k['id']}")

    def lab_url(self, path: str = "lab") -> str:
        return f"{self.url}/{path}?token={self.token}"
