"""Sessions started by a browser (its microphone): owned by that browser, stopped when it is gone.

A browser session is a push session created through ``POST loquilex/api/browser-sessions``.
Its owner is the browser connection that streams its audio: the session stays alive while that
connection delivers PCM frames or messages; once no client connection of the session has been
heard for ``browser_lease`` seconds (tab closed or reloaded, network lost, laptop asleep) it
is stopped through the normal stop ladder. Closing the caption panel stops it at once (the
client sends ``stop``); the lease is the bound for every path that cannot say goodbye.

The watcher is one task owned by `BrowserLeases`, started with the first browser session and
awaited by `aclose()` (called by the extension's stop before the manager's shutdown).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web
from traitlets import Float

from loquilex_nb.core.errors import BadRequest
from loquilex_nb.supervisor.session import Session

from .handlers import SessionsHandler
from .knobs import Knobs
from .manager import SessionManager

log = logging.getLogger("loquilex.server")
# Nobody is listening any more: the worker gets this long to finalize politely, then SIGTERM
# (its fast path: the current partial becomes the final) — the session ends within lease + ~1 s
# even when a final decode on a loaded machine would take longer.
LEASE_STOP_GRACE = 1.0


@dataclass
class Lease:
    session: Session
    created: float
    last_heard: float
    expired: bool = False
    _stop: asyncio.Task | None = field(default=None, repr=False)

    def as_dict(self, now: float, lease: float, connected: bool) -> dict[str, Any]:
        return {
            "sid": self.session.id,
            "pcm_bytes": self.session.pcm_bytes,
            "pcm_frames": self.session.pcm_frames,
            "pcm_seconds": round(self.session.pcm_bytes / 32000, 3),
            "connected": connected,
            "silent_for": round(now - self.last_heard, 3),
            "lease": lease,
            "expired": self.expired,
            "ended": self.session.ended_at is not None,
        }


class LeaseKnobs(Knobs):
    """BrowserLeases' configuration (LoquilexApp's traitlet of the same name)."""

    browser_lease = Float(10.0, help="A browser session no client was heard from for this many seconds is stopped.").tag(config=True)


class BrowserLeases:
    def __init__(self, manager: SessionManager, lease: float, poll: float | None = None) -> None:
        self.manager = manager
        self.lease = lease
        self.poll = poll if poll is not None else max(0.05, min(0.5, lease / 4))
        self.leases: dict[str, Lease] = {}
        self._task: asyncio.Task | None = None
        self._closed = False

    async def create(self, body: Any) -> Session:
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        if "source" in body or "kernel_id" in body:
            raise BadRequest("a browser session is a push session owned by the browser: no 'source' or 'kernel_id'")
        if self._closed:
            raise RuntimeError("the server is shutting down")
        session = await self.manager.create({**body, "source": {"kind": "push"}})
        now = time.monotonic()
        self.leases[session.id] = Lease(session, now, now)
        self._prune()
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="loquilex-browser-leases")
        return session

    def _connected(self, sid: str) -> bool:
        channel = self.manager.hub.channels.get(sid)
        return channel is not None and any(not c.closed for c in channel.connections)

    def check(self, now: float | None = None) -> list[str]:
        """One pass: stop leased sessions nobody has been heard from; returns their ids."""
        now = time.monotonic() if now is None else now
        expired = []
        for sid, lease in list(self.leases.items()):
            session = lease.session
            if session.ended_at is not None:
                if self.manager.get(sid) is None:
                    self.leases.pop(sid, None)  # forgotten by the server: nothing left to show
                continue
            # the lease runs from the last message heard, not from the check that saw it: a
            # client gone just after its last frame gets the whole lease, and no more
            channel = self.manager.hub.channels.get(sid)
            if channel is not None:
                lease.last_heard = max(lease.last_heard, channel.heard_at(now))
            if not lease.expired and now - lease.last_heard >= self.lease:
                lease.expired = True
                expired.append(sid)
                log.info("browser session %s: no client for %.1f s, stopping it", sid, now - lease.last_heard)
                self.manager.spawn(session.stop(grace=min(LEASE_STOP_GRACE, session.grace)), name=f"loquilex-lease-stop-{sid}")
        return expired

    async def _watch(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.poll)
            try:
                self.check()
            except Exception:
                log.exception("loquilex browser lease check failed")
            if not any(lease.session.ended_at is None for lease in self.leases.values()):
                self._task = None  # restarted by the next browser session
                return

    def _prune(self) -> None:
        for sid in [sid for sid in self.leases if self.manager.get(sid) is None]:
            del self.leases[sid]

    def figures(self) -> dict[str, Any]:
        self._prune()
        now = time.monotonic()
        return {
            "lease": self.lease,
            "sessions": [lease.as_dict(now, self.lease, self._connected(sid)) for sid, lease in self.leases.items()],
        }

    async def aclose(self) -> None:
        """Stop watching (the manager's shutdown stops the sessions); idempotent."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _LeasedManager:
    """The manager as SessionsHandler sees it, except that `create` makes a browser session."""

    def __init__(self, manager: SessionManager, leases: BrowserLeases) -> None:
        self._manager = manager
        self.create = leases.create

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


class BrowserSessionsHandler(SessionsHandler):
    """POST: as `sessions` (same body checks and errors), but a leased push session. GET: leases."""

    def initialize(self, manager: SessionManager, leases: BrowserLeases) -> None:  # type: ignore[override]
        super().initialize(_LeasedManager(manager, leases))  # type: ignore[arg-type]
        self.leases = leases

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self.leases.figures())


def lease_handlers(manager: SessionManager, leases: BrowserLeases) -> list[tuple[str, type, dict]]:
    return [(r"/loquilex/api/browser-sessions", BrowserSessionsHandler, {"manager": manager, "leases": leases})]
