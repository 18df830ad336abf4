"""The supervisor: owns every session of this process and runs on one asyncio loop."""

from __future__ import annotations

import asyncio
import builtins
import logging
import time
import uuid
from collections import OrderedDict
from typing import Iterable

from ..core.config import SessionConfig
from ..core.errors import SessionLimitError
from .session import Session

log = logging.getLogger("loquilex_nb")

ENDED_KEPT = 64


class Supervisor:
    def __init__(
        self,
        *,
        max_sessions: int = 4,
        grace: float = 3.0,
        term_grace: float = 2.0,
        log_capacity: int = 10000,
        worker_argv: list[str] | None = None,
        worker_env: dict[str, str] | None = None,
    ) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions!r}")
        if grace < 0 or term_grace < 0:
            raise ValueError("grace and term_grace must not be negative")
        self.max_sessions = max_sessions
        self.grace = grace
        self.term_grace = term_grace
        self.log_capacity = log_capacity
        self.worker_argv = worker_argv
        self.worker_env = worker_env
        self._live: dict[str, Session] = {}
        # ended sessions stay readable for a while (events, finals, end reason), bounded
        self._ended: OrderedDict[str, Session] = OrderedDict()
        self._closing = False
        self._shutdown_task: asyncio.Task | None = None

    def admit(self) -> None:
        """Raise now if a session could not start: callers check before creating anything."""
        if self._closing:
            raise RuntimeError("the supervisor is shutting down")
        if len(self._live) >= self.max_sessions:
            raise SessionLimitError(
                f"{len(self._live)} sessions are running, the limit is {self.max_sessions}; stop one first"
            )

    async def create(self, config: SessionConfig, *, sid: str | None = None, worker_env: dict[str, str] | None = None) -> Session:
        self.admit()
        sid = sid or uuid.uuid4().hex[:12]
        if sid in self._live or sid in self._ended:
            raise ValueError(f"session id {sid!r} is already in use")
        env = dict(self.worker_env or {})
        env.update(worker_env or {})
        session = Session(
            sid,
            config,
            grace=self.grace,
            term_grace=self.term_grace,
            log_capacity=self.log_capacity,
            worker_argv=self.worker_argv,
            worker_env=env,
            on_end=self._session_ended,
        )
        self._live[sid] = session
        try:
            await session.start()
        except BaseException:
            self._live.pop(sid, None)
            await session.close()
            raise
        return session

    def _session_ended(self, session: Session) -> None:
        self._live.pop(session.id, None)
        self._ended[session.id] = session
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def get(self, sid: str) -> Session:
        session = self._live.get(sid) or self._ended.get(sid)
        if session is None:
            raise KeyError(sid)
        return session

    def forget(self, sid: str) -> None:
        """Drop an ended session's record (events, finals) once nobody can ask for it."""
        self._ended.pop(sid, None)

    def list(self, include_ended: bool = False) -> list[Session]:
        sessions = list(self._live.values())
        if include_ended:
            sessions = list(self._ended.values()) + sessions
        return sessions

    async def stop(self, sid: str, grace: float | None = None):
        session = self.get(sid)
        end = await session.stop(grace)
        await session.close()
        return end

    async def _stop_many(self, sessions: Iterable[Session], deadline: float | None = None) -> None:
        """In parallel: the time taken does not grow with the number of sessions."""
        results = await asyncio.gather(*(s.close(deadline) for s in sessions), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("stopping a session failed: %r", result)

    async def stop_all(self, deadline: float | None = None) -> None:
        await self._stop_many(list(self._live.values()), deadline)

    async def stop_owned(self, owner: str) -> builtins.list[str]:  # `list` here is the method above
        owned = [s for s in self._live.values() if s.owner == owner]
        await self._stop_many(owned)
        return [s.id for s in owned]

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop everything and refuse new sessions; idempotent, never raises.

        ``timeout``: one overall bound for stopping every session (each one's stop ladder is
        squeezed to fit it), so shutdown time does not grow with the session count."""
        self._closing = True
        if self._shutdown_task is None:
            deadline = None if timeout is None else time.monotonic() + timeout
            self._shutdown_task = asyncio.create_task(self.stop_all(deadline), name="loquilex-shutdown")
        await asyncio.shield(self._shutdown_task)
        # sessions that ended on their own still own finished reader tasks: collect them
        await self._stop_many(list(self._ended.values()))
