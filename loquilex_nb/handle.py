"""The notebook API: `lx.session(...)` as a sync and async context manager (embedded mode)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

from .backends import EMBEDDED, default_backend
from .core.config import SessionConfig, output_files
from .core.audio import to_pcm_bytes
from .core.events import EndReason, Event, revised
from .core.resources import process_counters, worker_figures
from .core.sources import MicSource, PushSource
from .supervisor.runtime import RUNTIME, wait_future

POLL = 0.25


class Session:
    """A captioning session run by a backend: this process's supervisor or a Jupyter server.

    Nothing starts until `with`, `async with`, `start()` or the first blocking call.
    """

    def __init__(self, source: Any, *, backend: Any = None, **options: Any) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.backend = backend if backend is not None else default_backend()
        self.config = self.backend.prepare(source, self.id, options)
        self._core = None
        self._acquired = False
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> "Session":
        if self._closed:
            raise RuntimeError(f"session {self.id} is closed")
        if self._core is None:
            RUNTIME.acquire()
            self._acquired = True
            try:
                self._core = wait_future(RUNTIME.submit(self.backend.create(self.config, self.id)))
            except BaseException:
                self._release()
                raise
            self.id = self._core.id  # a server assigns its own id
        return self

    async def astart(self) -> "AsyncSession":
        if self._closed:
            raise RuntimeError(f"session {self.id} is closed")
        if self._core is None:
            RUNTIME.acquire()
            self._acquired = True
            try:
                self._core = await asyncio.wrap_future(RUNTIME.submit(self.backend.create(self.config, self.id)))
            except BaseException:
                self._acquired = False
                await RUNTIME.release_async()
                raise
            self.id = self._core.id
        return AsyncSession(self)

    async def aclose(self) -> EndReason | None:
        if self._closed:
            return self.end
        self._closed = True
        try:
            if self._core is not None:
                await asyncio.shield(asyncio.wrap_future(RUNTIME.submit(self._core.close())))
        except Exception:
            pass  # the runtime logs; close must not raise
        finally:
            if self._acquired:
                self._acquired = False
                await RUNTIME.release_async()
        return self.end

    def close(self) -> EndReason | None:
        """Stop the session and release everything it owns; idempotent, bounded, never raises."""
        if self._closed:
            return self.end
        self._closed = True
        try:
            if self._core is not None:
                wait_future(RUNTIME.submit(self._core.close()))
        except KeyboardInterrupt:
            self._release()
            raise
        except Exception:
            pass  # the runtime logs; close must not raise
        self._release()
        return self.end

    def _release(self) -> None:
        if self._acquired:
            self._acquired = False
            RUNTIME.release()

    def __enter__(self) -> "Session":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> "AsyncSession":
        return await self.astart()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- commands ------------------------------------------------------------------------
    def _session(self):
        if self._core is None:
            self.start()
        return self._core

    def _run(self, coro, timeout: float | None = None) -> Any:
        return wait_future(RUNTIME.submit(coro), timeout)

    def feed(self, chunk: Any) -> None:
        data, fmt = to_pcm_bytes(chunk)
        if data:
            self._run(self._session().feed(data, fmt))

    def finalize(self) -> None:
        self._run(self._session().finalize())

    def stop(self, grace: float | None = None) -> EndReason:
        """Ask the worker to finish (finalizing what it heard); escalates after the grace.

        In server mode the server's own `stop_grace` applies and `grace` is ignored.
        """
        return self._run(self._session().stop(grace))

    def wait(self, timeout: float | None = None) -> EndReason | None:
        """Block until the session ends (e.g. the end of a file); None on timeout."""
        return self._run(self._session().wait(timeout))

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Every event in order, until eos. Events that fell out of the log are skipped."""
        session = self._session()
        seq = 0
        while True:
            batch, _gap = self._run(session.next_events(seq, POLL if timeout is None else min(POLL, timeout)))
            for ev in batch:
                seq = ev.seq
                yield ev
                if ev.type == "eos":
                    return
            if not batch and not session.alive and seq >= session.seq:
                return

    __iter__ = events

    # -- state ---------------------------------------------------------------------------
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
        if hasattr(self._core, "outputs"):
            return self._core.outputs
        if not isinstance(self.config, SessionConfig):
            return {}  # server mode: the server names the folder when the session starts
        out = Path(self.config.out_dir)
        return {k: out / name for k, name in output_files(self.config.formats).items()}

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

    async def _run(self, coro) -> Any:
        return await asyncio.wrap_future(RUNTIME.submit(coro))

    async def feed(self, chunk: Any) -> None:
        data, fmt = to_pcm_bytes(chunk)
        if data:
            await self._run(self._s._core.feed(data, fmt))

    async def finalize(self) -> None:
        await self._run(self._s._core.finalize())

    async def stop(self, grace: float | None = None) -> EndReason:
        return await self._run(self._s._core.stop(grace))

    async def wait(self, timeout: float | None = None) -> EndReason | None:
        return await self._run(self._s._core.wait(timeout))

    async def __aiter__(self) -> AsyncIterator[Event]:
        core = self._s._core
        seq = 0
        while True:
            batch, _gap = await self._run(core.next_events(seq, POLL))
            for ev in batch:
                seq = ev.seq
                yield ev
                if ev.type == "eos":
                    return
            if not batch and not core.alive and seq >= core.seq:
                return


def session(source: Any, **options: Any) -> Session:
    return Session(source, **options)


def _remote(method: str, path: str) -> Any:
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
        return [s for s in _remote("GET", "sessions")["sessions"] if s["state"] in ("starting", "running", "stopping")]
    sup = RUNTIME.supervisor
    return [] if sup is None else [s.info() for s in sup.list()]


def stop_all() -> None:
    """Stop every session of this process (in server mode: those this kernel owns)."""
    if _server_mode():
        kernel = getattr(default_backend(), "kernel_id", None)
        for s in sessions():
            if kernel is None or s.get("owner") == kernel:
                _remote("DELETE", f"sessions/{s['id']}")
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
        remote = _remote("GET", "resources")
        out["server"] = remote["server"]
        out["sessions"] = workers + remote["sessions"]
    return out
