"""Section 5 of bench/run.py: the fault matrix. Every row injects its fault for real.

For each row we record what a user sees (states, error codes, the WebSocket close code),
events lost (a client's received `seq`s against the session's last `seq`), finals kept on
disk (lines of `final.txt` against finals delivered), resources left once things settle
(processes the row started that still run; the server's — or, for embedded rows, this
process's — fds, sockets, tasks and threads against the row's baseline) and the time from
the fault to a clean state (session ended, its processes gone, counters back to baseline).

Embedded rows run a `Supervisor` on this process's loop; server rows talk to a real
`python -m jupyter_server` child (see server.py) through REST and WebSockets.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import psutil

from measure import REPO
from stall import lost as stall_lost, session_log

import loquilex_nb as lx
from loquilex_nb.core.config import build_config
from loquilex_nb.core.config import default_model_dir

FIXTURES = REPO / "tests" / "fixtures"
SHORT = FIXTURES / "short.wav"
CORRUPT = FIXTURES / "corrupt.wav"
SERVER_KEYS = ("fds", "sockets", "tasks", "threads")
LOCAL_KEYS = ("fds", "threads")
CLEAN_TIMEOUT = 30.0
EVENT_TIMEOUT = 40.0
HANG_GRACE = 1.0
HANG_TERM_GRACE = 1.0
TMPFS_SIZE = "256k"
FSIZE_LIMIT = 100  # bytes per file for the RLIMIT_FSIZE fallback: captions.vtt of one short final fits, of two does not


def read_pcm(path: Path) -> bytes:
    import wave

    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes())


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


# -- embedded rows ----------------------------------------------------------------------------
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


async def row_worker_hang(tmp: Path, fault: str) -> dict:
    label = {"hang": "worker hang (`hang`)", "hang,ignore-sigterm": "worker hang, ignores SIGTERM (`hang,ignore-sigterm`)"}[fault]
    base = local_counters()
    from loquilex_nb.testing import faulty_worker

    sup = lx.Supervisor(grace=HANG_GRACE, term_grace=HANG_TERM_GRACE, worker_argv=faulty_worker.argv(*fault.split(",")))
    events: list = []
    stop = asyncio.Event()
    sid = f"fault-{uuid.uuid4().hex[:8]}"
    session = await sup.create(build_config(lx.PushSource(), sid=sid, output_root=tmp), sid=sid)
    reader = asyncio.create_task(collect(session, events, stop))
    try:
        await wait_events(events, lambda e: any(is_state(x, "running") for x in e), EVENT_TIMEOUT, "running")
        await session.feed(read_pcm(SHORT) + SILENCE, "s16le")  # deaf: never decoded
        t_fault = time.monotonic()
        end = await session.stop()
        t_end = time.monotonic()
        await session.close()
        await asyncio.wait_for(reader, 10)
    finally:
        stop.set()
        await sup.shutdown()
        await asyncio.gather(reader, return_exceptions=True)
    left = await local_settle(base, [session.pid])
    row = {
        "fault": label, "mode": "embedded",
        "how": f"`Supervisor(grace={HANG_GRACE:g}, term_grace={HANG_TERM_GRACE:g})`, worker `python -m loquilex_nb.testing.faulty_worker {fault}` (`worker_argv`; from `running` on its main thread is stuck in a native call); after `running` feed speech, then `stop()`",
        "user_sees": ev_story(events), "end": end.kind, "end_detail": end.detail,
        "expected_end": "terminated" if fault == "hang" else "killed",
        "events": lost([e.seq for e in events], session.seq),
        "finals_delivered": sum(1 for e in events if e.type == "asr.final"),
        "finals_on_disk": final_lines(session.config.out_dir),
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


def row_missing_model_embedded(tmp: Path) -> dict:
    base = local_counters()
    missing = tmp / "no-such-model"
    t = time.monotonic()
    try:
        lx.session(str(SHORT), model=str(missing), output_root=tmp / "missing-model-out")
        outcome, message = "no error", ""
    except ValueError as exc:
        outcome, message = "ValueError", str(exc)
    took = time.monotonic() - t
    now = local_counters()
    left = {"processes": max(0, now["children"] - base["children"]), **{f"bench_{k}": now[k] - base[k] for k in LOCAL_KEYS}}
    return {
        "fault": "missing model dir", "mode": "embedded",
        "how": f"`lx.session(file, model='{missing.name}')` (a directory that does not exist)",
        "user_sees": f"{outcome}: {tidy(message)[:90]}", "end": None, "expected_end": None,
        "raised": outcome == "ValueError", "output_dir_created": (tmp / "missing-model-out").exists(),
        "events": None, "finals_delivered": None, "finals_on_disk": None,
        "time_to_end_s": round(took, 4), "time_to_clean_s": round(took, 4),
        "resources_left": left, "resources_left_total": sum(abs(v) for v in left.values()),
    }


def _mount_tmpfs(path: Path) -> tuple[bool, str]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False, "not root or no mount(8)"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(path)], capture_output=True, text=True, timeout=10)
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def _umount(path: Path) -> None:
    for _ in range(20):
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.1)


def _fill(path: Path) -> int:
    """Write a filler file until the filesystem says ENOSPC; returns the bytes written."""
    n = 0
    with open(path / ".filler", "wb", buffering=0) as f:
        block = b"\0" * 4096
        while True:
            try:
                n += f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return n


RLIMIT_WORKER = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # else the write kills the worker instead of failing with EFBIG
    "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "sys.argv = ['loquilex_nb.worker']; runpy.run_module('loquilex_nb.worker', run_name='__main__')"
)


async def row_disk_full(tmp: Path, log: Callable[[str], None]) -> dict:
    mnt = tmp / "disk-full"
    mnt.mkdir()
    forced = os.environ.get("BENCH_DISK_FULL", "")  # "rlimit": skip the tmpfs even as root
    mounted, why = (False, "BENCH_DISK_FULL=rlimit") if forced == "rlimit" else _mount_tmpfs(mnt)
    method = f"tmpfs (`mount -t tmpfs -o size={TMPFS_SIZE}`), filled with a filler file after the first final" if mounted else f"RLIMIT_FSIZE={FSIZE_LIMIT} B on the worker (wrapper `worker_argv`, SIGXFSZ ignored): the captions of the second final no longer fit"
    if not mounted:
        log(f"  disk full: no tmpfs ({why}); using RLIMIT_FSIZE on the worker")
    base = local_counters()
    argv = None if mounted else [sys.executable, "-c", RLIMIT_WORKER, str(FSIZE_LIMIT)]
    sup = lx.Supervisor(worker_argv=argv)
    events: list = []
    stop = asyncio.Event()
    sid = f"fault-{uuid.uuid4().hex[:8]}"
    filled = 0
    survived = False
    pcm = read_pcm(SHORT)
    session = None
    try:
        session = await sup.create(build_config(lx.PushSource(), sid=sid, output_root=mnt), sid=sid)
        reader = asyncio.create_task(collect(session, events, stop))
        try:
            await wait_events(events, lambda e: any(is_state(x, "running") for x in e), EVENT_TIMEOUT, "running")
            await session.feed(pcm + SILENCE, "s16le")
            await wait_events(events, lambda e: any(x.type == "asr.final" for x in e), EVENT_TIMEOUT, "first final")
            if mounted:
                filled = _fill(mnt)
            t_fault = time.monotonic()
            try:
                await session.feed(pcm + SILENCE, "s16le")  # the second utterance cannot be written
            except Exception:
                pass
            # a full disk is not fatal: the caption-write error is reported, the next final
            # still reaches the client as an event, and the session stops cleanly when asked
            await wait_events(events, lambda e: any(x.type == "error" and (x.data or {}).get("code") == "caption-write" for x in e), EVENT_TIMEOUT, "caption-write error")
            await wait_events(events, lambda e: sum(x.type == "asr.final" for x in e) >= 2, EVENT_TIMEOUT, "second final")
            survived = True
            await session.stop()
            t_end = time.monotonic()
            await asyncio.wait_for(reader, 10)
        finally:
            stop.set()
            await asyncio.gather(reader, return_exceptions=True)
        end = session.end
        on_disk = final_lines(session.config.out_dir)
    finally:
        await sup.shutdown()
        try:
            (mnt / ".filler").unlink()
        except OSError:
            pass
        if mounted:
            _umount(mnt)
    left = await local_settle(base, [session.pid])
    finals = sum(1 for e in events if e.type == "asr.final")
    errors = [{k: v for k, v in (e.data or {}).items() if k != "stderr_tail"} for e in events if e.type == "error"]
    row = {
        "fault": "output disk full", "mode": "embedded", "method": "tmpfs" if mounted else "rlimit_fsize",
        "how": f"{method}; a push session, short.wav spoken twice",
        "user_sees": ev_story(events) + ("; the session went on (the second final reached the client as an event) and stopped cleanly when asked" if survived else ""),
        "end": end.kind if end else None, "end_detail": tidy(end.detail) if end else None,
        "expected_end": "clean",
        "errors": errors,
        "filler_bytes": filled,
        "events": lost([e.seq for e in events], session.seq),
        "finals_delivered": finals, "finals_on_disk": on_disk,
        "utterances_spoken": 2, "utterances_delivered_or_on_disk": max(finals, on_disk or 0),
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


# -- server rows ------------------------------------------------------------------------------
async def post(srv, body: dict) -> dict:
    return await srv.api("POST", "sessions", body)


async def push_session(srv, body: dict | None = None) -> tuple[dict, Watcher]:
    info = await post(srv, {"source": {"kind": "push"}, **(body or {})})
    w = Watcher(srv, info["id"])
    await w.connect()
    await w.wait(lambda: w.has("status", "running"), EVENT_TIMEOUT, "running")
    return info, w


async def speak(w: Watcher, finals: int = 1) -> None:
    """Feed short.wav and a second of silence; wait for its final."""
    before = w.finals()
    await w.send_pcm(read_pcm(SHORT) + SILENCE)
    await w.wait(lambda: w.finals() >= before + finals, EVENT_TIMEOUT, "a final")


async def row_worker_sigkill(srv, counters) -> dict:
    base = counters(await srv.resources())
    info, w = await push_session(srv)
    await speak(w)
    t_fault = time.monotonic()
    os.kill(info["pid"], signal.SIGKILL)
    await w.wait_closed()
    t_end = time.monotonic()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await w.aclose()
    left = await server_settle(srv, base, [info["pid"]], counters)
    row = {
        "fault": "worker SIGKILL", "mode": "server",
        "how": "push session with a WebSocket client; after its first final, `kill -9` the worker",
        "user_sees": w.story(), "end": end["end"]["kind"], "end_detail": end["end"]["detail"], "expected_end": "crashed",
        "events": await server_lost(srv, w, info["id"], base, counters), "finals_delivered": w.finals(), "finals_on_disk": final_lines(end["out_dir"]),
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


async def row_corrupt_audio(srv, counters) -> dict:
    shutil.copy(CORRUPT, srv.root / "corrupt.wav")
    base = counters(await srv.resources())
    t_fault = time.monotonic()
    # probed before any process starts: a 400, not a crashed worker (issue 9)
    code, answer = await srv.rest("POST", "loquilex/api/sessions", {"source": {"kind": "file", "path": "corrupt.wav", "realtime": False}})
    t_end = time.monotonic()
    left = await server_settle(srv, base, [], counters)
    row = {
        "fault": "corrupt audio", "mode": "server",
        "how": "file session on `tests/fixtures/corrupt.wav` (RIFF header with an invalid format tag), non-realtime",
        "user_sees": f"HTTP {code}: {answer.get('message', '') if isinstance(answer, dict) else answer}", "end": f"refused ({code})", "expected_end": "refused (400)",
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


async def row_missing_model_server(srv, counters, model_link: Path) -> dict:
    base = counters(await srv.resources())
    target = os.readlink(model_link)
    model_link.unlink()  # the configured model directory disappears under a running server
    try:
        t_fault = time.monotonic()
        code, body = await srv.rest("POST", "loquilex/api/sessions", {"source": {"kind": "push"}})
        took = time.monotonic() - t_fault
        now = counters(await srv.resources())
    finally:
        os.symlink(target, model_link)
    left = {"processes": max(0, now["children"] - base["children"]), **{f"server_{k}": now[k] - base[k] for k in SERVER_KEYS}}
    msg = (body or {}).get("message", "") if isinstance(body, dict) else str(body)
    return {
        "fault": "missing model dir", "mode": "server",
        "how": "server started with `--LoquilexApp.model=<symlink>`; the symlink is removed, then POST a session",
        "user_sees": f"HTTP {code} {(body or {}).get('error', '') if isinstance(body, dict) else ''}: {tidy(msg)[:90]}",
        "http_status": code, "end": None, "expected_end": None,
        "events": None, "finals_delivered": None, "finals_on_disk": None,
        "time_to_end_s": round(took, 4), "time_to_clean_s": round(took, 4),
        "resources_left": left, "resources_left_total": sum(abs(v) for v in left.values()),
    }


async def row_ws_resume(srv, counters, log) -> dict:
    base = counters(await srv.resources())
    info, feeder = await push_session(srv)
    obs = Watcher(srv, info["id"])
    await obs.connect()
    await obs.wait(lambda: obs.has("status", "running"), EVENT_TIMEOUT, "running")
    feed = asyncio.create_task(feeder.send_pcm(read_pcm(SHORT) + SILENCE, chunk_s=0.1))
    await obs.wait(lambda: obs.has("asr.partial"), EVENT_TIMEOUT, "a partial")
    t_fault = time.monotonic()
    obs.drop()
    await obs.wait_closed(10)
    before = obs.seqs()
    last_before = max(before)
    await asyncio.sleep(1.0)  # events keep coming while the client is away
    published_while_away = (await srv.api("GET", f"sessions/{info['id']}"))["last_seq"] - last_before
    t_re = await obs.connect(last_seq=last_before, token=obs.token)
    target = last_before + published_while_away
    await obs.wait(lambda: max(obs.seqs(), default=0) >= target, EVENT_TIMEOUT, "replay")
    t_caught = time.monotonic()
    await feed
    await feeder.send({"type": "stop"})
    await obs.wait_closed()
    await feeder.wait_closed()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await obs.aclose()
    await feeder.aclose()
    left = await server_settle(srv, base, [info["pid"]], counters)
    gaps = sum(1 for e in obs.envs if e["type"] == "gap")
    row = {
        "fault": "WebSocket drop and resume", "mode": "server",
        "how": "push session fed in real time by a second client; the watching client's TCP connection is cut (no close frame) after its first partial, it reconnects 1 s later with `hello {last_seq, resume_token}`",
        "user_sees": obs.story() + f" (gap messages: {gaps}; {published_while_away} events published while away, replayed in {1000 * (t_caught - t_re):.0f} ms)",
        "end": end["end"]["kind"], "expected_end": "clean",
        "events": await server_lost(srv, obs, info["id"], base, counters), "gap_messages": gaps, "published_while_away": published_while_away,
        "finals_delivered": obs.finals(), "finals_on_disk": final_lines(end["out_dir"]),
        "resume_caught_up_s": round(t_caught - t_re, 3),
        "time_to_end_s": round(t_caught - t_fault, 3),
        "time_note": "time to clean = reconnect → every missed event received (the client stayed away 1 s on purpose); resources are counted after the session ended",
    }
    row = finish_row(row, left, t_fault)
    row["time_to_clean_s"] = row["resume_caught_up_s"]
    return row


def kernel_pids(server_pid: int, kid: str) -> list[int]:
    out = []
    try:
        for c in psutil.Process(server_pid).children(recursive=True):
            try:
                if any(kid in part for part in c.cmdline()):
                    out.append(c.pid)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def _wait_kernel_ready(connection_file: Path, timeout: float) -> None:
    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(connection_file))
    kc.load_connection_file()
    # No heartbeat channel: on a loaded machine one late beat makes wait_for_ready report
    # "Kernel died before replying to kernel_info" for a kernel that is merely slow; the
    # timeout bounds the wait, and the caller already found the kernel's process.
    kc.start_channels(hb=False)
    try:
        kc.wait_for_ready(timeout=timeout)
    finally:
        kc.stop_channels()


async def start_kernel(srv) -> tuple[str, int]:
    """A real ipykernel started by the server (`POST api/kernels`), answering kernel_info."""
    code, body = await srv.rest("POST", "api/kernels", {"name": "python3"})
    if code not in (200, 201):
        raise RuntimeError(f"POST api/kernels -> {code}: {body}")
    kid = body["id"]
    deadline = time.monotonic() + 60
    cf = srv.root.parent / f"runtime-{srv.name}" / f"kernel-{kid}.json"
    while not (cf.exists() and kernel_pids(srv.proc.pid, kid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"kernel {kid}: no process or connection file {cf} after 60 s")
        await asyncio.sleep(0.05)
    await asyncio.get_running_loop().run_in_executor(None, _wait_kernel_ready, cf, max(1.0, deadline - time.monotonic()))
    return kid, kernel_pids(srv.proc.pid, kid)[0]


async def delete_kernel(srv, kid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, _ = await srv.rest("DELETE", f"api/kernels/{kid}")
        if code in (204, 404):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"DELETE kernel {kid} -> {code}")
        await asyncio.sleep(0.2)  # 500 while the restarter is mid-restart


async def row_kernel(srv, counters, how: str) -> dict:
    base = counters(await srv.resources())
    kid, kpid = await start_kernel(srv)
    info, w = await push_session(srv, {"kernel_id": kid})
    await speak(w)
    seen = {kpid}
    t_fault = time.monotonic()
    if how == "restart":
        code, body = await srv.rest("POST", f"api/kernels/{kid}/restart", "")
        if code != 200:
            raise RuntimeError(f"restart -> {code}: {body}")
    else:
        os.kill(kpid, signal.SIGKILL)
    await w.wait_closed()
    t_end = time.monotonic()
    while alive(info["pid"]) and time.monotonic() - t_end < 10:
        await asyncio.sleep(0.05)
    t_worker_gone = time.monotonic()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await w.aclose()
    # the kernel itself lives on (restarted under the same id); the user shuts it down later, once
    # it is up again (deleting a kernel mid-start interrupts its imports: noise in the server's log)
    deadline = time.monotonic() + 30
    while not (set(kernel_pids(srv.proc.pid, kid)) - seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    seen.update(kernel_pids(srv.proc.pid, kid))
    cf = srv.root.parent / f"runtime-{srv.name}" / f"kernel-{kid}.json"
    try:
        await asyncio.get_running_loop().run_in_executor(None, _wait_kernel_ready, cf, 30.0)
    except Exception:
        pass
    await delete_kernel(srv, kid)
    left = await server_settle(srv, base, [info["pid"], *seen], counters)
    row = {
        "fault": "kernel restart" if how == "restart" else "kernel SIGKILL", "mode": "server",
        "how": ("a real ipykernel started with `POST api/kernels` owns a push session (`kernel_id`); after its first final, "
                + ("`POST api/kernels/{id}/restart`" if how == "restart" else "`kill -9` the kernel process (jupyter's restarter revives it under the same id)"))
        + "; then the kernel is deleted",
        "user_sees": w.story(), "end": end["end"]["kind"], "end_detail": end["end"]["detail"], "expected_end": "clean",
        "events": await server_lost(srv, w, info["id"], base, counters), "finals_delivered": w.finals(), "finals_on_disk": final_lines(end["out_dir"]),
        "time_to_end_s": round(t_end - t_fault, 3), "worker_gone_after_s": round(t_worker_gone - t_fault, 3),
        "kernel_processes_seen": len(seen),
        "time_note": "time to clean = fault → the session ended and its worker is gone; resources are counted after the kernel was deleted, against the baseline before it was started",
    }
    row = finish_row(row, left, t_fault)
    row["kernel_deleted_and_settled_s"] = row["time_to_clean_s"]
    row["time_to_clean_s"] = row["worker_gone_after_s"]
    return row


async def _two_sessions(srv) -> tuple[dict, Watcher, dict]:
    """A: fed, one final delivered, then mid-utterance (speech without the closing silence); B: idle."""
    a, w = await push_session(srv)
    await speak(w)
    b = await post(srv, {"source": {"kind": "push"}})
    pcm = read_pcm(SHORT)
    await w.send_pcm(pcm[: len(pcm) * 2 // 3 // 2 * 2], chunk_s=0.1)  # two thirds of an utterance, in real time
    await w.wait(lambda: sum(1 for e in w.envs if e["type"] == "asr.partial" and e["seq"] > max(x["seq"] for x in w.envs if x["type"] == "asr.final")) > 0, EVENT_TIMEOUT, "a partial of the second utterance")
    return a, w, b


async def row_server_signal(srv, sig: int) -> dict:
    a, w, b = await _two_sessions(srv)
    pids = [a["pid"], b["pid"]]
    server_pid = srv.proc.pid
    t_fault = time.monotonic()
    srv.proc.send_signal(sig)
    try:
        await asyncio.get_running_loop().run_in_executor(None, lambda: srv.proc.wait(30))
    except subprocess.TimeoutExpired:
        pass
    t_exit = time.monotonic()
    await w.wait_closed(10)
    while any(alive(p) for p in pids) and time.monotonic() - t_exit < CLEAN_TIMEOUT:
        await asyncio.sleep(0.02)
    t_clean = time.monotonic()
    await w.aclose()
    left_pids = [p for p in pids if alive(p)] + ([server_pid] if alive(server_pid) else [])
    name = "server SIGTERM" if sig == signal.SIGTERM else "server SIGKILL"
    row = {
        "fault": name, "mode": "server",
        "how": "two push sessions (one with a WebSocket client, one final delivered, a second utterance in progress; one idle), then "
        + ("SIGTERM to the jupyter server (its own shutdown runs `stop_extension`)" if sig == signal.SIGTERM else "SIGKILL to the jupyter server (nothing runs; the workers' parent-death signal must end them)"),
        "user_sees": w.story(), "end": None, "expected_end": None,
        "server_exit_code": srv.proc.returncode, "server_exit_s": round(t_exit - t_fault, 3),
        "events": lost(w.seqs(), None), "events_note": "holes up to the last seq received (the server is gone: nothing to replay)",
        "finals_delivered": w.finals(), "finals_on_disk": final_lines(a["out_dir"]),
        "time_to_end_s": round(t_exit - t_fault, 3),
        "time_to_clean_s": round(t_clean - t_fault, 3),
        "resources_left": {"processes": len(left_pids)},
        "resources_left_total": len(left_pids),
    }
    if left_pids:
        row["pids_left"] = left_pids
        for pid in left_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return row


def row_stalled_client(stall: dict) -> dict:
    """The stalled-client row comes from the fan-out section's run (see stall.py)."""
    run = stall["runs"]["stalled"]
    cut = run.get("cut") or {}
    healthy = run["healthy_client"]
    view = cut.get("client_view") or {}
    resumed = cut.get("resumed") or {}
    left = {"processes": run["residual"].get("children", 0), **{f"server_{k}": run["residual"].get(k, 0) for k in SERVER_KEYS}}
    released = cut.get("socket_released_at_s")
    if not cut.get("cut_before_eos"):
        sees = "NOT cut off before the session ended"
    elif released is not None:
        sees = f"cut off: the server dropped its socket {released:.1f} s after it stopped reading"
    else:
        sees = "cut off (the socket's release was not observed)"
    if view:
        sees += f"; reading later it gets {view.get('frames')} frames then " + (f"close {view['close_code']}" if view.get("close_code") else "an aborted connection (no close frame)")
    if resumed:
        sees += f"; resuming with its token it gets {resumed.get('events')} more events, {resumed.get('gap_messages')} gaps, close {resumed.get('close')}"
    sees += f"; the other client: every event but {healthy['partials_superseded']} superseded partials, close {healthy['close']}"
    return {
        "fault": "stalled client", "mode": "server",
        "how": f"a client sends hello and never reads (raw socket, SO_RCVBUF {stall['rcvbuf']} B, MSS 1460) while a non-realtime file session on {stall['audio_s']:.0f} s of audio produces events; server `send_queue_limit={stall['send_queue_limit']}`; a second client reads normally; afterwards the stalled client drains its socket and resumes (the run of the fan-out memory figure)",
        "user_sees": sees,
        "end": run["session"]["end"], "expected_end": "clean",
        "events": cut.get("stalled_client_total") or {},
        "other_client_events": {k: healthy[k] for k in ("expected", "received", "duplicates", "in_order", "lost", "partials_superseded")},
        "finals_delivered": None, "finals_on_disk": None,
        "time_to_end_s": released,
        "time_to_clean_s": released,
        "time_note": "the stalled connection's queue and socket are released when tornado gives up on the close handshake, 5 s after the queue overflowed",
        "resources_left": left, "resources_left_total": sum(abs(v) for v in left.values()),
        "cut": cut,
    }


# -- the section ------------------------------------------------------------------------------
async def bench_faults(tmp: Path, log: Callable[[str], None], make_server: Callable, stop_server: Callable, counters: Callable, stall: dict | None) -> dict:
    rows: list[dict] = []

    async def run(name: str, coro_fn) -> None:
        t = time.monotonic()
        try:
            row = await coro_fn()
        except Exception as exc:  # one failed row must not lose the rest
            log(f"  fault row '{name}' FAILED: {exc!r}")
            row = {"fault": name, "error": f"{type(exc).__name__}: {exc}"[:1000], "resources_left_total": None}
        row["row_wall_s"] = round(time.monotonic() - t, 2)
        rows.append(row)
        log(f"  {name}: {row.get('user_sees', row.get('error', ''))[:110]} | left {row.get('resources_left')} | clean {row.get('time_to_clean_s')} s")

    emb = tmp / "embedded"
    emb.mkdir(parents=True, exist_ok=True)
    await run("worker hang (`hang`)", lambda: row_worker_hang(emb, "hang"))
    await run("worker hang, ignores SIGTERM", lambda: row_worker_hang(emb, "hang,ignore-sigterm"))
    await run("missing model dir (embedded)", lambda: asyncio.sleep(0, row_missing_model_embedded(emb)))
    await run("output disk full", lambda: row_disk_full(emb, log))

    link = tmp / "model-link"
    if link.is_symlink():
        link.unlink()
    os.symlink(default_model_dir(), link)
    srv = await make_server("faults", {"model": str(link)})
    try:
        await run("worker SIGKILL", lambda: row_worker_sigkill(srv, counters))
        await run("corrupt audio", lambda: row_corrupt_audio(srv, counters))
        await run("missing model dir (server)", lambda: row_missing_model_server(srv, counters, link))
        await run("WebSocket drop and resume", lambda: row_ws_resume(srv, counters, log))
        # the first kernel a jupyter server starts creates its zmq context (threads, fds) for the
        # life of the process: start and delete one first so that is not counted against a row
        t = time.monotonic()
        try:
            kid, kpid = await start_kernel(srv)
            await delete_kernel(srv, kid)
            while alive(kpid) and time.monotonic() - t < 30:
                await asyncio.sleep(0.05)
            log(f"  warm-up kernel started and deleted in {time.monotonic() - t:.1f} s")
        except Exception as exc:
            log(f"  warm-up kernel FAILED: {exc!r}")
        await run("kernel restart", lambda: row_kernel(srv, counters, "restart"))
        await run("kernel SIGKILL", lambda: row_kernel(srv, counters, "kill"))
        await run("server SIGTERM", lambda: row_server_signal(srv, signal.SIGTERM))
    finally:
        await stop_server(srv)
    srv = await make_server("faults-kill", {})
    try:
        await run("server SIGKILL", lambda: row_server_signal(srv, signal.SIGKILL))
    finally:
        await stop_server(srv)
    if stall is not None:
        await run("stalled client", lambda: asyncio.sleep(0, row_stalled_client(stall)))
    order = ["worker SIGKILL", "worker hang (`hang`)", "worker hang, ignores SIGTERM (`hang,ignore-sigterm`)", "kernel SIGKILL", "kernel restart", "server SIGTERM", "server SIGKILL", "WebSocket drop and resume", "stalled client", "corrupt audio", "missing model dir", "output disk full"]
    rows.sort(key=lambda r: (order.index(r["fault"]) if r["fault"] in order else len(order), r.get("mode", "")))
    return {
        "rows": rows,
        "all_clean": all(r.get("resources_left_total") == 0 for r in rows),
        "disk_full_method": next((r.get("method") for r in rows if r["fault"] == "output disk full"), None),
    }
