"""The notebook API: `lx.session(...)` as a sync and async context manager (embedded mode)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Coroutine, Iterator, TypeVar, Union

from .backends import EMBEDDED, SessionCore, default_backend
from .core.audio import to_pcm_bytes
from .core.config import SessionConfig
from .core.events import EndReason, Event, revised
from .core.resources import process_counters, worker_figures
from .core.sources import MicSource, PushSource  # noqa: F401  (re-exported by the public face)
from .supervisor.runtime import RUNTIME, wait_future

T = TypeVar("T")


class _Blocking:
    """How the sync API reaches the private loop: it blocks this thread on each step."""

    async def run(self, coro: Coroutine[Any, Any, T], *, shield: bool = False) -> T:
        # no task of the caller's to shield from: only Ctrl-C interrupts, and it should cancel
        return wait_future(RUNTIME.submit(coro))

    async def release(self) -> None:
        RUNTIME.release()


class _Awaiting:
    """How the async API reaches the private loop: it awaits each step on the caller's loop."""

    async def run(self, coro: Coroutine[Any, Any, T], *, shield: bool = False) -> T:
        fut = asyncio.wrap_future(RUNTIME.submit(coro))
        return await (asyncio.shield(fut) if shield else fut)

    async def release(self) -> None:
        await RUNTIME.release_async()


BLOCKING, AWAITING = _Blocking(), _Awaiting()
Via = Union[_Blocking, _Awaiting]


def _blocking(op: Coroutine[Any, Any, T]) -> T:
    """Run an operation written for `BLOCKING` to its end in this thread.

    Each operation is one coroutine over a `via`; with `BLOCKING` none of its awaits ever
    suspends (each blocks instead), so it finishes at its first `send`, without any loop.
    """
    try:
        op.send(None)
    except StopIteration as done:
        return done.value
    op.close()
    raise RuntimeError("a blocking operation suspended")  # a bug: it awaited something else


class EventCursor:
    """Where one reader of a session's events stands. `step()` runs on the private loop and
    wakes on the event log (no polling); the reader stops at `done` (eos, or the session
    ended with nothing left to read). Events that fell out of the log are skipped."""

    def __init__(self, core: Any) -> None:
        self.core = core
        self.seq = 0
        self.done = False

    async def step(self, timeout: float | None = None) -> list[Event]:
        """The next events (waiting for at least one, or the end, up to `timeout`)."""
        core = self.core
        batch, _gap = await core.next_events(self.seq, timeout)
        out = []
        for ev in batch:
            self.seq = ev.seq
            out.append(ev)
            if ev.type == "eos":
                self.done = True
                break
        if not batch and not core.alive and self.seq >= core.seq:
            self.done = True
        return out


class Session:
    """A captioning session run by a backend: this process's supervisor or a Jupyter server.

    Nothing starts until `with`, `async with`, `start()` or the first blocking call.
    Every operation is written once as a coroutine over a `via` (`BLOCKING` or `AWAITING`),
    so `start`/`astart`, `close`/`aclose`, and `Session`'s and `AsyncSession`'s commands
    run the very same code.
    """

    def __init__(self, source: Any, *, backend: Any = None, **options: Any) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.backend = backend if backend is not None else default_backend()
        self.config = self.backend.prepare(source, self.id, options)
        self._core: SessionCore | None = None
        self._acquired = False
        self._closed = False
        self._settled: concurrent.futures.Future = concurrent.futures.Future()

    # -- the operations, once ------------------------------------------------------------
    async def _start(self, via: Via) -> SessionCore:
        if self._closed:
            raise RuntimeError(f"session {self.id} is closed")
        if self._core is None:
            RUNTIME.acquire()
            self._acquired = True
            try:
                core = await via.run(self.backend.create(self.config, self.id))
            except BaseException:
                await self._release(via)
                raise
            self._core, self.id = core, core.id  # a server assigns its own id
            self._settle()
            return core
        return self._core

    async def _started(self, via: Via) -> SessionCore:
        """The running session behind this handle (after a close too), started first if need be."""
        if self._core is not None:
            return self._core
        return await self._start(via)

    async def _close(self, via: Via) -> EndReason | None:
        if self._closed:
            return self.end
        self._closed = True
        self._settle()
        try:
            if self._core is not None:
                await via.run(self._core.close(), shield=True)
        except Exception:
            pass  # the runtime logs; close must not raise
        finally:
            await self._release(via)  # on Ctrl-C / cancel too: a second close finds nothing to do
        return self.end

    def _settle(self) -> None:
        try:
            self._settled.set_result(None)
        except concurrent.futures.InvalidStateError:
            pass  # started, then closed: settled once already

    async def _release(self, via: Via) -> None:
        if self._acquired:
            self._acquired = False
            await via.release()

    async def _feed(self, via: Via, chunk: Any) -> None:
        data, fmt = to_pcm_bytes(chunk)  # on the caller's thread: the loop only writes
        if data:
            core = await self._started(via)
            await via.run(core.feed(data, fmt))

    async def _command(self, via: Via, name: str, *args: Any) -> Any:
        core = await self._started(via)
        return await via.run(getattr(core, name)(*args))

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Session":
        _blocking(self._start(BLOCKING))
        return self

    async def astart(self) -> "AsyncSession":
        await self._start(AWAITING)
        return AsyncSession(self)

    def close(self) -> EndReason | None:
        """Stop the session and release everything it owns; idempotent, bounded, never raises."""
        return _blocking(self._close(BLOCKING))

    async def aclose(self) -> EndReason | None:
        return await self._close(AWAITING)

    def __enter__(self) -> "Session":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "AsyncSession":
        return await self.astart()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- commands ------------------------------------------------------------------------
    def feed(self, chunk: Any) -> None:
        _blocking(self._feed(BLOCKING, chunk))

    def finalize(self) -> None:
        _blocking(self._command(BLOCKING, "finalize"))

    def stop(self, grace: float | None = None) -> EndReason:
        """Ask the worker to finish (finalizing what it heard); escalates after the grace.

        In server mode the server's own `stop_grace` applies and `grace` is ignored.
        """
        return _blocking(self._command(BLOCKING, "stop", grace))

    def wait(self, timeout: float | None = None) -> EndReason | None:
        """Block until the session ends (e.g. the end of a file); None on timeout."""
        return _blocking(self._command(BLOCKING, "wait", timeout))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event in order, until eos; each arrives as soon as the session has it.
        Events that fell out of the log are skipped. `timeout` only bounds each wait."""
        cursor = self.cursor()
        while not cursor.done:
            yield from wait_future(RUNTIME.submit(cursor.step(timeout)))

    __iter__ = events

    def cursor(self) -> EventCursor:
        """A reader of this session's events from the first (starts the session if need be)."""
        return EventCursor(_blocking(self._started(BLOCKING)))

    # -- state ---------------------------------------------------------------------------
    @property
    def started(self) -> bool:
        """The session has been created (it may have ended since)."""
        return self._core is not None

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def settled(self) -> concurrent.futures.Future:
        """Done once the session has started or was closed (before it ever started, maybe):
        a reader waiting for the start waits on this, not on a timer."""
        return self._settled

    @property
    def status(self) -> str:
        return "created" if self._core is None else self._core.state

    @property
    def end(self) -> EndReason | None:
        return None if self._core is None else self._core.end

    @property
    def finals(self) -> list[Event]:
        return [] if self._core is None else list(self._core.finals)

    @property
    def revisions(self) -> list[Event]:
        """`asr.revision` events: later, better text for earlier finals (same segment_id)."""
        return [] if self._core is None else list(getattr(self._core, "revisions", ()))

    @property
    def partial(self) -> Event | None:
        return None if self._core is None else self._core.partial

    @property
    def pid(self) -> int | None:
        return None if self._core is None else self._core.pid

    @property
    def outputs(self) -> dict[str, Path]:
        remote: dict[str, Path] | None = getattr(self._core, "outputs", None)
        if remote is not None:
            return remote
        if not isinstance(self.config, SessionConfig):
            return {}  # server mode: the server names the folder when the session starts
        out = Path(self.config.out_dir)
        names = {"partial": "partial.txt", "final": "final.txt", "vtt": "captions.vtt", "srt": "captions.srt"}
        wanted = {"partial"} | {{"txt": "final"}.get(f, f) for f in self.config.formats}
        return {k: out / v for k, v in names.items() if k in wanted}

    @property
    def text(self) -> str:
        """The captions so far: each final with its latest revision applied."""
        return " ".join(ev.text or "" for ev in revised(self.finals, self.revisions)).strip()

    def widget(self, **options: Any):
        """A live caption view of this session (needs ipywidgets): status, partial, finals, latency."""
        from .ui.widgets import CaptionView

        return CaptionView(self, **options)

    def __repr__(self) -> str:
        return f"<loquilex Session {self.id} {self.status}>"


class AsyncSession:
    """The same session, with awaitable commands for `async with` / `async for`."""

    def __init__(self, session: Session) -> None:
        self._s = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)

    async def feed(self, chunk: Any) -> None:
        await self._s._feed(AWAITING, chunk)

    async def finalize(self) -> None:
        await self._s._command(AWAITING, "finalize")

    async def stop(self, grace: float | None = None) -> EndReason:
        return await self._s._command(AWAITING, "stop", grace)

    async def wait(self, timeout: float | None = None) -> EndReason | None:
        return await self._s._command(AWAITING, "wait", timeout)

    async def __aiter__(self) -> AsyncIterator[Event]:
        cursor = EventCursor(await self._s._started(AWAITING))
        while not cursor.done:
            for ev in await AWAITING.run(cursor.step()):
                yield ev


def session(source: Any, **options: Any) -> Session:
    return Session(source, **options)


def server_request(method: str, path: str) -> Any:
    """One request to the server backend, made on the private loop (started just for it)."""
    backend = default_backend()
    RUNTIME.acquire()
    try:
        return wait_future(RUNTIME.submit(backend.request(method, path)))
    finally:
        RUNTIME.release()


def _server_mode() -> bool:
    return default_backend() is not EMBEDDED


def sessions() -> list[dict[str, Any]]:
    """Running sessions: this process's, or in server mode the server's."""
    if _server_mode():
        return [s for s in server_request("GET", "sessions")["sessions"] if s["state"] in ("starting", "running", "stopping")]
    sup = RUNTIME.supervisor
    return [] if sup is None else [s.info() for s in sup.list()]


def stop_all() -> None:
    """Stop every session of this process (in server mode: those this kernel owns)."""
    if _server_mode():
        kernel = getattr(default_backend(), "kernel_id", None)
        for s in sessions():
            if kernel is None or s.get("owner") == kernel:
                server_request("DELETE", f"sessions/{s['id']}")
    if RUNTIME.supervisor is not None:
        RUNTIME.call(lambda sup: sup.stop_all())


def resources() -> dict[str, Any]:
    """Counters of this process (tasks of the private loop) and of each session's worker.

    In server mode the server's own counters are included under "server".
    """
    sup = RUNTIME.supervisor
    proc = process_counters(loop=RUNTIME.loop) if RUNTIME.loop is not None else process_counters()
    workers = []
    for s in sup.list() if sup is not None else []:
        if s.pid is not None:
            workers.append({"sid": s.id, "state": s.state, **worker_figures(s.pid).as_dict()})
    out: dict[str, Any] = {"process": proc.as_dict(), "sessions": workers}
    if _server_mode():
        remote = server_request("GET", "resources")
        out["server"] = remote["server"]
        out["sessions"] = workers + remote["sessions"]
    return out
