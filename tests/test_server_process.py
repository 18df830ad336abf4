"""A real `jupyter server` process: its workers must not outlive it, however it ends.

SIGTERM runs the server's own shutdown (stop_extension stops every session); SIGKILL runs
nothing, so the workers' parent-death signal has to take them down.
"""

from __future__ import annotations

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

import psutil
import pytest

from conftest import gone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.root = tmp_path / "root"
        self.root.mkdir()
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout=90.0):  # a loaded shared machine can take 20-30 s
        env = dict(os.environ)
        for name in ("config", "data", "runtime"):
            (self.tmp / name).mkdir()
        env.update(
            JUPYTER_CONFIG_DIR=str(self.tmp / "config"),
            JUPYTER_DATA_DIR=str(self.tmp / "data"),
            JUPYTER_RUNTIME_DIR=str(self.tmp / "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
        )
        argv = [
            sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser",
            "--ip=127.0.0.1", f"--port={self.port}", "--port-retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--ServerApp.jpserver_extensions={'jupyter_server_ext': True, 'jupyterlab': False, 'jupyter_lsp': False, 'notebook_shim': False, 'jupyter_server_terminals': False}",
            "--LoquilexApp.stop_grace=3", "--LoquilexApp.term_grace=2", "--debug",  # the log is shown when a test fails
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.request("GET", "/api/status")[0] == 200:
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            assert self.proc.poll() is None, f"server exited early:\n{self.log()}"
            assert time.monotonic() < deadline, f"server did not answer /api/status:\n{self.log()}"
            time.sleep(0.1)

    def request(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read() or b"null")

    def create_push_sessions(self, n):
        infos = []
        for _ in range(n):
            code, info = self.request("POST", "/loquilex/api/sessions", {"source": {"kind": "push"}})
            assert code == 201, info
            infos.append(info)
        pids = [i["pid"] for i in infos]
        assert len(set(pids)) == n and all(psutil.pid_exists(p) for p in pids)
        # the workers are the server's children, in their own process groups
        children = {c.pid for c in psutil.Process(self.proc.pid).children()}
        assert set(pids) <= children
        return pids

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def kill(self):
        """Whatever happened, leave no server behind (and reap it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path)
    try:
        yield srv
    finally:
        srv.kill()


def wait_all_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    return [p for p in pids if not gone(p, max(0.0, deadline - time.monotonic()) or 0.01)]


@pytest.mark.leak_settle(10)
def test_sigterm_stops_the_server_and_its_workers(server):
    server.start()
    pids = server.create_push_sessions(2)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server ignored SIGTERM for 20 s:\n{server.log()}")
    took = time.monotonic() - started
    assert code in (0, -signal.SIGTERM), server.log()
    # Reaped by the server itself before it exited: no waiting here. Had only the
    # parent-death signal ended them, they would still exist at this instant (pytest,
    # a subreaper, adopts them; nobody reaps them but its leak check).
    unreaped = [p for p in pids if psutil.pid_exists(p)]
    assert unreaped == [], f"workers {unreaped} were not stopped and reaped by the server:\n{server.log()}"
    # a clean shutdown: the extension stopped its sessions itself (no orphan to kill)
    assert took < 15, took
    assert "stop_extension did not finish cleanly" not in server.log()


@pytest.mark.leak_settle(10)
def test_sigkill_leaves_no_worker_behind(server):
    server.start()
    (running,) = server.create_push_sessions(1)
    sid = server.request("GET", "/loquilex/api/sessions")[1]["sessions"][0]["id"]
    deadline = time.monotonic() + 20
    while server.request("GET", f"/loquilex/api/sessions/{sid}")[1]["state"] != "running":
        assert time.monotonic() < deadline, "the worker never reported running"
        time.sleep(0.05)
    (starting,) = server.create_push_sessions(1)  # killed before it even loaded its model
    pids = [running, starting]
    server.proc.kill()
    server.proc.wait(10)
    started = time.monotonic()
    survivors = wait_all_gone(pids, 2.0)
    assert survivors == [], f"workers {survivors} outlived a SIGKILLed server by {time.monotonic() - started:.1f} s"
