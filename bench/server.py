"""The server side of bench/run.py: loquilex behind a real `jupyter server` child.

Every measurement talks to a `jupyter server` child (`loquilex_nb.testing.jupyter`: 127.0.0.1
only, token auth, only the loquilex extension enabled) started by bench/run.py and stopped in a
`finally`. This module holds that child and its async REST/WebSocket client; the sections are
one file each:

- fanout.py: replay of an ended non-realtime file session to 1/4/16 WebSocket clients at once,
  against a bare Tornado WebSocket server writing the same pre-serialised frames;
- latency.py: end-to-end final-caption latency of a push session fed in real time over the WebSocket;
- overhead.py: per-session server overhead (fds, sockets, tasks, threads, RSS) and idle CPU with N push sessions;
- cycles.py: REST create/stop cycles with server counters before/after and an RSS curve;
- stall.py: the stalled-client memory run; faults.py: the fault matrix.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import psutil
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import websocket_connect

from measure import REPO

from loquilex_nb.testing import jupyter

SPEECH = REPO / "tests" / "fixtures" / "speech.wav"
SAMPLE = REPO / "loquilex_nb" / "data" / "sample.wav"
CHUNK_S = 0.1
SILENCE_TAIL_S = 1.0
START_TIMEOUT = 90.0
SESSION_TIMEOUT = 180.0
SETTLE_S = 1.0
BASELINE_TIMEOUT = 20.0
COUNTERS = ("fds", "sockets", "tasks", "threads", "children", "rss")


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def counters(res: dict) -> dict:
    srv = res["server"]
    return {
        "fds": srv["fds"],
        "sockets": srv["sockets"],
        "tasks": srv["tasks"],
        "threads": srv["threads"],
        "children": len(srv["children"]),
        "rss": srv["rss"],
        "channels": res.get("channels"),
        "sessions": len(res.get("sessions", [])),
    }


def delta(after: dict, before: dict, keys=COUNTERS) -> dict:
    return {k: (after[k] - before[k]) if after.get(k) is not None and before.get(k) is not None else None for k in keys}


class ServerClient:
    """Async REST and WebSocket calls to a loquilex server at `base` (the child, or a route to it through a proxy)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base if base.endswith("/") else base + "/"
        self.ws_base = "ws" + self.base[len("http"):]
        self.token = token
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    async def rest(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        if data is None and method in ("POST", "PUT"):
            data = ""
        req = HTTPRequest(self.base + path, method=method, body=data, headers={**self.headers, "Content-Type": "application/json"}, request_timeout=timeout, connect_timeout=timeout)
        resp = await self.http.fetch(req, raise_error=False)  # still raises for connection errors
        try:
            payload = json.loads(resp.body) if resp.body else None
        except ValueError:
            payload = resp.body
        return resp.code, payload

    async def api(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        code, payload = await self.rest(method, "loquilex/api/" + path, body)
        if code not in ok:
            raise RuntimeError(f"{method} {path} -> {code}: {payload}")
        return payload

    async def resources(self) -> dict:
        return await self.api("GET", "resources")

    async def ws(self, sid: str):
        req = HTTPRequest(f"{self.ws_base}loquilex/api/sessions/{sid}/events", headers=self.headers, connect_timeout=30, request_timeout=30)
        return await websocket_connect(req, max_message_size=64 << 20)

    async def wait_ended(self, sid: str, timeout: float = SESSION_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = await self.api("GET", f"sessions/{sid}")
            if info.get("end") is not None:
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {sid} did not end within {timeout:.0f} s: {info}")
            await asyncio.sleep(0.2)


class JupyterServer(ServerClient):
    """The `jupyter server` child of one part of the bench (`child`) and its client: always
    stopped by `stop()`."""

    def __init__(self, root: Path, name: str, extra: dict[str, Any] | None = None, env: dict[str, str] | None = None, keep_log: Path | None = None) -> None:
        self.name = name
        self.extra = extra or {}
        self.keep_log = keep_log  # a directory: the log is copied there when the server stops
        args = ["--LoquilexApp.max_sessions=64", *(f"--LoquilexApp.{k}={v}" for k, v in self.extra.items())]
        self.child = jupyter.JupyterServer(root.parent / f"home-{name}", args=args, env=env, root=root,
                                           log_path=root.parent / f"jupyter-{name}.log")
        super().__init__(self.child.url, self.child.token)
        self.root = root
        self.port = self.child.port
        self.log_path = self.child.log_path
        self.runtime = self.child.runtime  # its kernels' connection files
        self.started_s: float | None = None
        self.shutdown: dict = {}

    @property
    def proc(self):
        return self.child.proc

    async def start(self) -> None:
        t0 = time.monotonic()
        await self.child.astart(START_TIMEOUT)
        self.started_s = time.monotonic() - t0

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.child.log(1 << 16).splitlines()[-n:])

    def log_problems(self) -> list[str]:
        """Error lines of the server's log, each with the traceback that follows it."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out, i = [], 0
        while i < len(lines):
            ln = lines[i]
            if "Traceback" in ln or " ERROR " in ln or "[E " in ln or "Task exception was never retrieved" in ln or "Task was destroyed" in ln:
                block = [ln.rstrip()]
                j = i + 1
                while j < len(lines) and j - i < 40 and (lines[j].startswith((" ", "\t", "Traceback")) or (lines[j] and not lines[j].startswith("["))):
                    block.append(lines[j].rstrip())
                    j += 1
                out.append("\n".join(block)[:3000])
                i = j
            else:
                i += 1
        return out

    def stop(self) -> dict:
        """SIGTERM, wait; SIGKILL if it hangs. Reports shutdown time and leftover workers."""
        if self.proc is None:
            return {}
        self.child.stop(signal.SIGTERM, timeout=30, settle=0.5)
        if self.keep_log is not None:
            try:
                self.keep_log.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.log_path, self.keep_log / self.log_path.name)
            except OSError:
                pass
        self.shutdown = {
            "took_s": round(self.child.stop_took_s, 3),
            "exit_code": self.proc.returncode,
            "needed_sigkill": self.child.needed_sigkill,
            "children_at_stop": self.child.stop_descendants,
            "children_left": len(self.child.left_behind),
            "log_problems": self.log_problems()[:20],
        }
        return self.shutdown


async def close_after_eos(ws, timeout: float = 3.0) -> str:
    """After `eos` the server should close with 1000; returns the close code or 'still open'."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = await asyncio.wait_for(ws.read_message(), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            ws.close(1000)
            return "still open"
        if msg is None:
            return str(ws.close_code)


async def settle_to(srv: JupyterServer, baseline: dict, keys=("fds", "sockets", "tasks", "threads", "children")) -> tuple[dict, float, bool]:
    t0 = time.monotonic()
    while True:
        now = counters(await srv.resources())
        if all(now[k] == baseline[k] for k in keys):
            return now, time.monotonic() - t0, True
        if time.monotonic() - t0 > BASELINE_TIMEOUT:
            return now, time.monotonic() - t0, False
        await asyncio.sleep(0.5)
