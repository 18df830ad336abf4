"""What the rows of the fault matrix (faults.py, abuse.py) share: a WebSocket client that records
everything, the story of what a user saw, settling back to a baseline and the row's totals."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any, Callable

import psutil
from measure import REPO
from stall import lost as stall_lost
from stall import session_log

FIXTURES = REPO / "tests" / "fixtures"
SHORT = FIXTURES / "short.wav"
CORRUPT = FIXTURES / "corrupt.wav"
SERVER_KEYS = ("fds", "sockets", "tasks", "threads")
LOCAL_KEYS = ("fds", "threads")
CLEAN_TIMEOUT = 30.0
EVENT_TIMEOUT = 40.0
SILENCE = b"\0" * 32000  # 1 s


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def final_lines(out_dir: str | Path | None) -> int | None:
    if not out_dir:
        return None
    try:
        return sum(1 for ln in (Path(out_dir) / "final.txt").read_text(encoding="utf-8").splitlines() if ln.strip())
    except OSError:
        return None


def lost(received: list[int], last: int | None) -> dict:
    """Without the session's log (embedded rows: no coalescing; or the server is gone): holes up to `last`."""
    got = set(received)
    top = last if last is not None else max(got, default=0)
    missing = [s for s in range(1, top + 1) if s not in got]
    return {"expected": top, "received": len(received), "duplicates": len(received) - len(got), "in_order": received == sorted(got), "lost": len(missing), "partials_superseded": 0}


async def server_lost(srv, w: "Watcher", sid: str, base: dict, counters: Callable) -> dict:
    """Against the log the server still holds for the ended session (partials may be superseded by design).

    Called after the row's clean-up was timed; the log reader's own socket is waited out again.
    """
    result = stall_lost(w.seqs(), await session_log(srv, sid))
    await server_settle(srv, base, [], counters, timeout=10)
    return result


def local_counters() -> dict:
    p = psutil.Process()
    kids = [c for c in p.children(recursive=True) if alive(c.pid)]
    return {"fds": p.num_fds(), "threads": p.num_threads(), "children": len(kids)}


# -- a WebSocket client that records everything -----------------------------------------------
class Watcher:
    def __init__(self, srv, sid: str) -> None:
        self.srv, self.sid = srv, sid
        self.envs: list[dict] = []
        self.token: str | None = None
        self.close_code: Any = None
        self.ws = None
        self._task: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self.connects = 0

    async def connect(self, last_seq: int = 0, token: str | None = None) -> float:
        t = time.monotonic()
        self.ws = await self.srv.ws(self.sid)
        hello: dict = {"type": "hello", "last_seq": last_seq}
        if token:
            hello["resume_token"] = token
        await self.ws.write_message(json.dumps(hello))
        self.close_code = None
        self.connects += 1
        self._task = asyncio.create_task(self._read(self.ws))
        return t

    async def _read(self, ws) -> None:
        while True:
            msg = await ws.read_message()
            if msg is None:
                self.close_code = ws.close_code if ws.close_code is not None else "dropped"
                self._changed.set()
                return
            env = json.loads(msg)
            env["_recv"] = time.monotonic()
            if env["type"] == "welcome":
                self.token = env["data"]["resume_token"]
            self.envs.append(env)
            self._changed.set()

    async def wait(self, pred: Callable[[], bool], timeout: float = EVENT_TIMEOUT, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"{what} not seen within {timeout:.0f} s on {self.sid}; got {[e['type'] for e in self.envs][-12:]}, close {self.close_code}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    def has(self, type_: str, state: str | None = None) -> bool:
        return any(e["type"] == type_ and (state is None or ((e["data"].get("data") or {}).get("state") == state)) for e in self.envs)

    @property
    def closed(self) -> bool:
        return self._task is not None and self._task.done()

    async def wait_closed(self, timeout: float = EVENT_TIMEOUT) -> None:
        await self.wait(lambda: self.closed, timeout, "close")

    def drop(self) -> None:
        """Cut the TCP connection without a close frame (a network drop, as the server sees it)."""
        proto = getattr(self.ws, "protocol", None)
        if proto is not None and proto.stream is not None:
            proto.stream.close()

    async def send_pcm(self, pcm: bytes, chunk_s: float | None = None) -> None:
        if chunk_s is None:
            await self.ws.write_message(pcm, binary=True)
            return
        step = int(16000 * chunk_s) * 2
        t0 = time.monotonic()
        for i, off in enumerate(range(0, len(pcm), step)):
            delay = t0 + i * chunk_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.write_message(pcm[off : off + step], binary=True)

    async def send(self, msg: dict) -> None:
        await self.ws.write_message(json.dumps(msg))

    async def aclose(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5)
            except asyncio.TimeoutError:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def seqs(self) -> list[int]:
        return [e["seq"] for e in self.envs if e.get("seq")]

    def finals(self) -> int:
        return sum(1 for e in self.envs if e["type"] == "asr.final")

    def story(self) -> str:
        return story([(e["type"], e.get("data") or {}) for e in self.envs], self.close_code)


_PATH = re.compile(r"(?:/[^/\s'\"]+)+/([^/\s'\"]+)")


def tidy(text: str) -> str:
    """Absolute paths (temporary directories of this run) shortened to their last part."""
    return _PATH.sub(r"\1", text)


def story(items: list[tuple[str, dict]], close: Any = None) -> str:
    """What a user sees, compressed: states, errors, finals, close code."""
    parts: list[str] = []
    finals = 0
    for type_, body in items:
        inner = body.get("data") if isinstance(body.get("data"), dict) else body
        if type_ == "asr.final":
            finals += 1
            continue
        if finals:
            parts.append(f"{finals} final" + ("s" if finals > 1 else ""))
            finals = 0
        if type_ == "status":
            state = (inner or {}).get("state")
            end = (inner or {}).get("end")
            if state == "finished":
                continue
            parts.append(state + (f" ({end['kind']})" if end else ""))
        elif type_ == "error":
            code = (inner or {}).get("code")
            detail = tidy(str((inner or {}).get("detail") or ""))
            parts.append(f"error {code}" + (f": {detail[:70]}" if detail else ""))
        elif type_ == "eos":
            parts.append("eos")
        elif type_ == "gap":
            parts.append("GAP")
    if finals:
        parts.append(f"{finals} final" + ("s" if finals > 1 else ""))
    if close is not None:
        parts.append(f"close {close}")
    out: list[str] = []
    for p in parts:  # collapse repeats
        if not out or out[-1] != p:
            out.append(p)
    return " → ".join(out)


# -- settling ---------------------------------------------------------------------------------
async def server_settle(srv, base: dict, pids: list[int], counters: Callable, timeout: float = CLEAN_TIMEOUT) -> dict:
    t0 = time.monotonic()
    while True:
        left = [p for p in pids if alive(p)]
        now = counters(await srv.resources())
        delta = {k: now[k] - base[k] for k in SERVER_KEYS}
        if not left and not any(delta.values()):
            break
        if time.monotonic() - t0 > timeout:
            break
        await asyncio.sleep(0.1)
    return {"processes": len(left), **{f"server_{k}": v for k, v in delta.items()}, "_settled_at": time.monotonic(), "_pids_left": left}


async def local_settle(base: dict, pids: list[int], timeout: float = CLEAN_TIMEOUT) -> dict:
    t0 = time.monotonic()
    while True:
        left = [p for p in pids if alive(p)]
        now = local_counters()
        delta = {k: now[k] - base[k] for k in LOCAL_KEYS}
        if not left and not any(delta.values()) and now["children"] <= base["children"]:
            break
        if time.monotonic() - t0 > timeout:
            break
        await asyncio.sleep(0.05)
    return {"processes": len(left) + max(0, now["children"] - base["children"]), **{f"bench_{k}": v for k, v in delta.items()}, "_settled_at": time.monotonic(), "_pids_left": left}


def finish_row(row: dict, left: dict, t_fault: float) -> dict:
    row["time_to_clean_s"] = round(left.pop("_settled_at") - t_fault, 3)
    pids_left = left.pop("_pids_left")
    row["resources_left"] = left
    row["resources_left_total"] = sum(abs(v) for v in left.values() if isinstance(v, (int, float)))
    if pids_left:
        row["pids_left"] = pids_left
        for pid in pids_left:  # never leave anything behind, but report it
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return row


async def collect(session, out: list, stop: asyncio.Event) -> None:
    seq = 0
    while True:
        events, _ = await session.next_events(seq, 0.2)
        for ev in events:
            out.append(ev)
            seq = ev.seq
        if not session.alive and seq >= session.seq:
            return
        if stop.is_set() and not events:
            return


def ev_story(events: list) -> str:
    return story([(ev.type, ev.data or {}) for ev in events])


async def wait_events(events: list, pred: Callable[[list], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred(events):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not seen within {timeout:.0f} s; got {[e.type for e in events][-12:]}")
        await asyncio.sleep(0.02)


def is_state(ev, state: str) -> bool:
    return ev.type == "status" and (ev.data or {}).get("state") == state


async def run_row(rows: list[dict], log: Callable[[str], None], name: str, coro_fn: Callable, width: int = 110) -> None:
    """Run one row and keep what it found; one failed row must not lose the rest."""
    t = time.monotonic()
    try:
        row = await coro_fn()
    except Exception as exc:
        log(f"  fault row '{name}' FAILED: {exc!r}")
        row = {"fault": name, "error": f"{type(exc).__name__}: {exc}"[:1000], "resources_left_total": None}
    row["row_wall_s"] = round(time.monotonic() - t, 2)
    rows.append(row)
    log(f"  {name}: {row.get('user_sees', row.get('error', ''))[:width]} | left {row.get('resources_left')} | clean {row.get('time_to_clean_s')} s")
