"""The private event-loop thread that hosts the supervisor in embedded mode.

It works the same in a plain script and in a Jupyter kernel whose own loop is already
running, because the supervisor never touches the caller's loop. The thread lives while at
least one session handle is open (it is the thread that spawns workers, so their
parent-death signal stays armed) and is joined when the last one closes and at interpreter
exit, before Python waits for non-daemon threads.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from typing import Any, Callable, Coroutine, TypeVar

from .supervisor import Supervisor

log = logging.getLogger("loquilex_nb")
T = TypeVar("T")

SHUTDOWN_TIMEOUT = 30.0
MAX_SESSIONS_ENV = "LOQUILEX_MAX_SESSIONS"
DEFAULT_MAX_SESSIONS = 4  # this machine (2 cores) keeps ~6 live streams within a second of latency


def check_max_sessions(value: Any, name: str = "max_sessions") -> int:
    """The limit's one rule, here and in the server's `LoquilexApp.max_sessions`: a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def max_sessions_from_env() -> int | None:
    raw = os.environ.get(MAX_SESSIONS_ENV, "").strip()
    if not raw:
        return None
    try:
        value: Any = int(raw)
    except ValueError:
        value = raw
    return check_max_sessions(value, MAX_SESSIONS_ENV)


def wait_future(fut: concurrent.futures.Future, timeout: float | None = None) -> Any:
    """The future's result, waited for in one piece: on POSIX a signal interrupts the wait, so
    Ctrl-C (KeyboardInterrupt) still gets through. Ctrl-C, the timeout, or any other exception
    raised here cancels the work behind the future."""
    try:
        return fut.result(timeout)
    except concurrent.futures.TimeoutError:
        if fut.done():  # the coroutine itself raised TimeoutError: that is its result
            return fut.result()
        fut.cancel()
        raise TimeoutError("timed out") from None
    except BaseException:
        fut.cancel()
        raise


_exit_hooks: list[Callable[[], None]] = []
_exit_lock = threading.Lock()


def at_exit(fn: Callable[[], None]) -> bool:
    """Call `fn` at interpreter exit before Python joins non-daemon threads (plain `atexit` runs
    after that join, too late to stop the threads it would wait for). Hooks run newest first,
    like atexit's: what was set up on top of the runtime stops before it. False when the
    interpreter is already shutting down."""
    with _exit_lock:
        if not _exit_hooks:
            try:
                threading._register_atexit(_run_exit_hooks)  # type: ignore[attr-defined]
            except RuntimeError:
                return False
        _exit_hooks.append(fn)
    return True


def _run_exit_hooks() -> None:
    with _exit_lock:
        hooks = list(reversed(_exit_hooks))
    for fn in hooks:
        try:
            fn()
        except Exception as exc:  # one failing hook must not keep the others from running
            log.error("loquilex exit hook %r failed: %r", fn, exc)


_UNSET: Any = object()


class Runtime:
    def __init__(self, supervisor_factory: Callable[[], Supervisor] | None = None) -> None:
        self._factory = supervisor_factory or self._new_supervisor
        self._max_sessions: int | None = None  # None: $LOQUILEX_MAX_SESSIONS, else the default
        self._lock = threading.Lock()
        self._refs = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._supervisor: Supervisor | None = None
        self._atexit_registered = False
        self._exited: concurrent.futures.Future | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop

    @property
    def supervisor(self) -> Supervisor | None:
        return self._supervisor

    @property
    def max_sessions(self) -> int:
        """The embedded supervisor's session limit: `configure()`, else the environment, else 4."""
        if self._max_sessions is not None:
            return self._max_sessions
        from_env = max_sessions_from_env()
        return DEFAULT_MAX_SESSIONS if from_env is None else from_env

    def configure(self, *, max_sessions: Any = _UNSET) -> dict[str, Any]:
        """Change settings of embedded mode (a running supervisor too); returns them all."""
        with self._lock:
            if max_sessions is not _UNSET:
                self._max_sessions = None if max_sessions is None else check_max_sessions(max_sessions)
                if self._supervisor is not None:
                    self._supervisor.max_sessions = self.max_sessions
            return {"max_sessions": self.max_sessions}

    def _new_supervisor(self) -> Supervisor:
        return Supervisor(max_sessions=self.max_sessions)

    def acquire(self) -> None:
        with self._lock:
            if self._thread is None:
                _ = self.max_sessions  # a bad $LOQUILEX_MAX_SESSIONS fails here, before any thread
                self._start_locked()
            self._refs += 1

    def release(self) -> None:
        parts = self._detach_if_last()
        if parts is not None:
            self._stop_parts(*parts)

    async def release_async(self) -> None:
        """Like release(), awaiting the shutdown instead of blocking the caller's loop."""
        parts = self._detach_if_last()
        if parts is None:
            return
        thread, loop, supervisor, exited = parts
        try:
            await asyncio.shield(asyncio.wrap_future(asyncio.run_coroutine_threadsafe(supervisor.shutdown(), loop)))
        except Exception as exc:
            log.error("loquilex supervisor shutdown failed: %r", exc)
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.shield(asyncio.wrap_future(exited))
        thread.join()  # the thread has finished its last statement; this returns at once

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future:
        loop = self._loop
        if loop is None:
            close = getattr(coro, "close", None)
            if close is not None:
                close()  # never awaited: say nothing of it at garbage collection
            raise RuntimeError("the loquilex runtime is not running")
        return asyncio.run_coroutine_threadsafe(coro, loop)

    def call(self, coro_fn: Callable[[Supervisor], Coroutine[Any, Any, T]], timeout: float | None = None) -> T:
        assert self._supervisor is not None
        return wait_future(self.submit(coro_fn(self._supervisor)), timeout)

    def _start_locked(self) -> None:
        ready = threading.Event()
        exited: concurrent.futures.Future = concurrent.futures.Future()
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._supervisor = self._factory()
                ready.set()
                loop.run_forever()
            finally:
                # like asyncio.run: a task left running (e.g. a close interrupted by a second
                # Ctrl-C) is cancelled and awaited, never destroyed while pending
                leftover = asyncio.all_tasks(loop)
                for task in leftover:
                    task.cancel()
                if leftover:
                    loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()
                ready.set()
                exited.set_result(None)

        self._loop = loop
        self._exited = exited
        self._thread = threading.Thread(target=run, name="loquilex-loop")
        self._thread.start()
        ready.wait()
        if not self._atexit_registered:
            self._atexit_registered = at_exit(self.shutdown)

    def _detach_if_last(self, force: bool = False):
        with self._lock:
            if not force:
                self._refs -= 1
                if self._refs > 0:
                    return None
            self._refs = 0
            if self._thread is None:
                return None
            parts = (self._thread, self._loop, self._supervisor, self._exited)
            self._thread = self._loop = self._supervisor = None
            return parts

    def _stop_parts(self, thread, loop, supervisor, exited) -> None:
        interrupted: BaseException | None = None
        fut = asyncio.run_coroutine_threadsafe(supervisor.shutdown(), loop)
        while True:
            try:
                fut.result(timeout=SHUTDOWN_TIMEOUT)
                break
            except KeyboardInterrupt as exc:
                # a second Ctrl-C must not strand workers: finish the (bounded) shutdown first
                interrupted = exc
            except BaseException as exc:  # close never raises to its caller: log it
                log.error("loquilex supervisor shutdown failed: %r", exc)
                break
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        if interrupted is not None:
            raise interrupted

    def shutdown(self) -> None:
        """Stop every session and join the loop thread; idempotent."""
        parts = self._detach_if_last(force=True)
        if parts is not None:
            self._stop_parts(*parts)


RUNTIME = Runtime()
