"""One supervised session: its worker process, pipes, reader tasks and event log.

Runs on the supervisor's event loop. Every step of the stop ladder is awaited, never
blocked on: polite stop on the control pipe, `grace`, SIGTERM to the worker's process
group, `term_grace`, SIGKILL, reap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from typing import Any, Callable

from ..core.config import SessionConfig
from ..core.errors import SessionEnded
from ..core.eventlog import EventLog, EventLogView
from ..core.events import EndReason, Event

log = logging.getLogger("loquilex_nb")

STDERR_TAIL = 20
EVENT_LINE_LIMIT = 4 * 1024 * 1024
KILL_WAIT = 5.0
STARTUP_ALLOWANCE = 10.0
KILL_RESERVE = 1.0  # of a stop deadline, kept for SIGKILL and the reap
STOP_RESERVE = 1.0  # of the grace, kept for a decode under way and the exit after a stop


class Session(EventLogView):
    def __init__(
        self,
        sid: str,
        config: SessionConfig,
        *,
        grace: float,
        term_grace: float,
        log_capacity: int,
        worker_argv: list[str] | None = None,
        worker_env: dict[str, str] | None = None,
        on_end: Callable[["Session"], None] | None = None,
    ) -> None:
        self.id = sid
        self.config = config
        self.owner = config.owner
        self.grace = grace
        self.term_grace = term_grace
        self.state = "starting"
        self.end: EndReason | None = None
        self.created = time.time()
        self.ended_at: float | None = None  # monotonic
        self.eventlog = EventLog(log_capacity)
        self.pid: int | None = None
        self._argv = worker_argv or [sys.executable, "-m", "loquilex_nb.worker"]
        self._env = worker_env or {}
        self._on_end = on_end
        self._proc: asyncio.subprocess.Process | None = None
        self._stderr: deque[str] = deque(maxlen=STDERR_TAIL)
        self._tasks: list[asyncio.Task] = []
        self._ladder: asyncio.Task | None = None
        self._signalled: str | None = None
        self._done = asyncio.Event()
        self._worker_error: str | None = None
        self._stop_sent = False
        self.bytes_in_flight = 0  # PCM handed to feed() and not yet taken by the pipe
        self.pcm_bytes = 0  # PCM handed to feed() in all (what a client delivered)
        self.pcm_frames = 0
        self._handles_usr1 = False

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._publish("status", data={"state": "starting"})
        env = dict(os.environ)
        env.update(self._env)
        env["LOQUILEX_PARENT_PID"] = str(os.getpid())
        env["HF_HUB_OFFLINE"] = "1"
        env.setdefault("PYTHONUNBUFFERED", "1")
        # numpy's OpenBLAS starts a thread per core that spin-waits between the worker's small
        # matrix products (the mel filterbank): it doubled a decode's CPU for no gain in time.
        # CTranslate2 has its own thread count (`cpu_threads`).
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        tunables = env.get("GLIBC_TUNABLES", "")
        if "glibc.malloc.hugetlb" not in tunables:
            # most of an idle worker's stop is the kernel freeing its ~100 MB of malloc'd memory
            # (the model); in transparent huge pages that takes half as long. A no-op where THP is off.
            env["GLIBC_TUNABLES"] = ":".join(filter(None, (tunables, "glibc.malloc.hugetlb=1")))
        fd = self.config.source_fd
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv,
                pass_fds=(fd,) if fd is not None else (),  # the confined source file, same number
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # own process group: signals reach only the worker
                env=env,
                limit=EVENT_LINE_LIMIT,
            )
        except OSError as exc:
            self._finish(EndReason("crashed", None, f"cannot start worker: {exc}"))
            raise
        self.pid = self._proc.pid
        payload = self.config.worker_payload()
        # after `stop`, the audio queued ahead of it is decoded while the grace allows, with
        # time left for the last decode: a flooded push session still ends on its own
        payload["stop_budget"] = max(0.5, self.grace - STOP_RESERVE)
        assert self._proc.stdin is not None  # spawned with stdin=PIPE
        self._proc.stdin.write((json.dumps(payload) + "\n").encode())
        self._tasks = [
            asyncio.create_task(self._read_events(), name=f"loquilex-events-{self.id}"),
            asyncio.create_task(self._read_stderr(), name=f"loquilex-stderr-{self.id}"),
        ]
        self._tasks.append(asyncio.create_task(self._reap(), name=f"loquilex-reap-{self.id}"))

    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    async def wait(self, timeout: float | None = None) -> EndReason | None:
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.end

    async def stop(self, grace: float | None = None, deadline: float | None = None) -> EndReason:
        """Run the stop ladder once; concurrent callers share it. Never raises for a dead worker.

        ``deadline`` (monotonic) caps the whole ladder: the polite part shrinks so that
        SIGTERM, its grace and SIGKILL still fit before it (server shutdown uses one deadline
        for every session)."""
        if self._ladder is None:
            self._ladder = asyncio.create_task(self._stop_ladder(self.grace if grace is None else grace, deadline), name=f"loquilex-stop-{self.id}")
        await asyncio.shield(self._ladder)
        assert self.end is not None
        return self.end

    async def close(self, deadline: float | None = None) -> None:
        """Stop and wait for every task this session owns."""
        await self.stop(deadline=deadline)
        if self._ladder is not None:
            await self._ladder
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop_ladder(self, grace: float, deadline: float | None = None) -> None:
        if self._done.is_set():
            return
        if self.state == "starting":
            # still loading its model: a worker with audio to finalize gets time to load it
            # too (on a loaded machine that alone can exceed the grace)
            grace += STARTUP_ALLOWANCE
        term_grace = self.term_grace
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic() - KILL_RESERVE)
            term_grace = min(term_grace, left / 2)
            grace = min(grace, left - term_grace)
        if self.state in ("starting", "running"):
            self._set_state("stopping")
        started = time.monotonic()
        if self._handles_usr1:
            # out of band: a worker holding back a flood (backpressure) sees the stop now,
            # not after decoding everything queued ahead of it in the pipe
            self._signal(signal.SIGUSR1, None)
        try:
            # a worker that stopped reading can leave the pipe full; the grace covers that too
            await asyncio.wait_for(self._send({"op": "stop"}, quiet=True), grace)
        except asyncio.TimeoutError:
            pass
        if await self._wait_exit(max(0.0, grace - (time.monotonic() - started))):
            return
        self._signal(signal.SIGTERM, "terminated")
        if await self._wait_exit(term_grace):
            return
        self._signal(signal.SIGKILL, "killed")
        if not await self._wait_exit(KILL_WAIT):
            log.error("worker %s of session %s survived SIGKILL for %.0f s", self.pid, self.id, KILL_WAIT)

    async def _wait_exit(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._done.wait()), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    def _signal(self, sig: int, as_: str | None) -> None:
        if self._proc is None or self._proc.returncode is not None:
            return
        if as_ is not None:
            self._signalled = as_
        try:
            os.killpg(self._proc.pid, sig)
        except ProcessLookupError:
            pass

    # -- commands ------------------------------------------------------------------------
    async def finalize(self) -> None:
        await self._send({"op": "finalize"})

    async def feed(self, data: bytes, fmt: str) -> None:
        header = json.dumps({"op": "pcm", "n": len(data), "fmt": fmt}).encode() + b"\n"
        self.pcm_bytes += len(data)
        self.pcm_frames += 1
        self.bytes_in_flight += len(data)
        try:
            await self._send_raw(header + data)
        finally:
            self.bytes_in_flight -= len(data)

    async def _send(self, msg: dict[str, Any], quiet: bool = False) -> None:
        try:
            await self._send_raw(json.dumps(msg).encode() + b"\n")
        except SessionEnded:
            if not quiet:
                raise

    async def _send_raw(self, data: bytes) -> None:
        proc = self._proc
        if proc is None or self._done.is_set() or proc.stdin is None or proc.stdin.is_closing():
            raise SessionEnded(f"session {self.id} has ended")
        try:
            proc.stdin.write(data)
            await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise SessionEnded(f"session {self.id} has ended") from exc

    # -- readers -------------------------------------------------------------------------
    async def _read_events(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            try:
                line = await self._proc.stdout.readline()
            except ValueError:  # one line over the limit: drop it, keep the stream
                self._publish("error", data={"code": "protocol", "detail": "oversized event line from worker"})
                continue
            if not line:
                return
            try:
                raw = json.loads(line)
                self._ingest(raw)
            except (ValueError, KeyError, TypeError) as exc:
                self._publish("error", data={"code": "protocol", "detail": f"bad event line from worker: {exc}"})

    async def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        while True:
            line = await self._proc.stderr.readline()
            if not line:
                return
            self._stderr.append(line.decode("utf-8", "replace").rstrip())

    async def _reap(self) -> None:
        assert self._proc is not None
        code = await self._proc.wait()
        # the readers see EOF once the pipes drain; wait for them so no event is lost
        await asyncio.gather(*self._tasks[:2], return_exceptions=True)
        if self._proc.stdin is not None:
            self._proc.stdin.close()
            try:
                await self._proc.stdin.wait_closed()
            except (BrokenPipeError, ConnectionResetError):
                pass
        self._finish(self._end_reason(code))

    def _end_reason(self, code: int) -> EndReason:
        tail = tuple(self._stderr)
        if self._signalled == "killed":
            return EndReason("killed", code, "SIGKILL after the worker ignored stop and SIGTERM", tail)
        if self._signalled == "terminated":
            return EndReason("terminated", code, "SIGTERM after the stop grace expired", tail)
        if code == 0 and not self._worker_error:
            return EndReason("clean", 0, "", tail)
        if code < 0:
            detail = f"worker died from signal {signal.Signals(-code).name}"
        else:
            detail = self._worker_error or f"worker exited with code {code}"
        return EndReason("crashed", code, detail, tail)

    def _finish(self, end: EndReason) -> None:
        if self._done.is_set():
            return
        self.end = end
        self.ended_at = time.monotonic()
        if end.kind == "crashed":
            self._publish("error", data={"code": "worker-crashed", "detail": end.detail, "exit_code": end.exit_code, "stderr_tail": list(end.stderr_tail)})
        self._set_state("failed" if end.kind == "crashed" else "stopped", end=end.as_dict())
        self._publish("eos", data={"end": end.as_dict()})
        self._done.set()
        if self._on_end is not None:
            self._on_end(self)

    # -- events --------------------------------------------------------------------------
    def _ingest(self, raw: dict[str, Any]) -> None:
        type_ = raw["type"]
        if type_ not in ("status", "asr.partial", "asr.final", "asr.revision", "error"):
            raise ValueError(f"unknown event type {type_!r}")
        data = raw.get("data")
        if type_ == "status" and data and data.get("state") == "running":
            self._handles_usr1 = True  # its handlers were installed long before
            if self.state == "starting":
                self.state = "running"
        if type_ == "error" and data and data.get("fatal"):
            self._worker_error = data.get("detail") or data.get("code")
        self._publish(
            type_,
            t_wall=raw.get("t_wall"),
            t_mono=raw.get("t_mono"),
            segment_id=raw.get("segment_id"),
            text=raw.get("text"),
            t0=raw.get("t0"),
            t1=raw.get("t1"),
            words=raw.get("words"),
            data=data,
        )

    def _set_state(self, state: str, **data: Any) -> None:
        self.state = state
        self._publish("status", data={"state": state, **data})

    def _publish(self, type_: str, *, t_wall: float | None = None, t_mono: float | None = None, **fields: Any) -> None:
        self.eventlog.append(Event(
            type=type_,
            sid=self.id,
            seq=self.seq + 1,
            t_wall=time.time() if t_wall is None else t_wall,
            t_mono=time.monotonic() if t_mono is None else t_mono,
            **fields,
        ))

    @property
    def log(self) -> deque[Event]:
        return self.eventlog.events

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "owner": self.owner,
            "pid": self.pid,
            "created": self.created,
            "out_dir": self.config.out_dir,
            "source": dict(self.config.source),
            "last_seq": self.seq,
            "finals": len(self.finals),
            "end": self.end.as_dict() if self.end else None,
        }
