"""Captioning counts as server activity, for idle culling.

jupyter_server's `/api/status` `last_activity` (what jupyterhub-singleuser reports to the hub,
and what `shutdown_no_activity_timeout` and jupyterhub-idle-culler act on) is the latest of
every `*_last_activity` value in the web app's settings. Streaming over a WebSocket touches
none of jupyter_server's own keys, so a server could be culled in the middle of a talk.

A session is active while it produces events (audio in means partials and finals out; a
state change counts too). A session that is open but idle counts only when the operator
says so (`LoquilexApp.idle_sessions_keep_alive`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, MutableMapping

from jupyter_server._tz import utcnow
from traitlets import Bool, Float

from .knobs import Knobs

SETTINGS_KEY = "loquilex_last_activity"
log = logging.getLogger("loquilex.server")


class ActivityKnobs(Knobs):
    """ActivityReporter's configuration (LoquilexApp's traitlets of the same names)."""

    idle_sessions_keep_alive = Bool(
        False,
        help="Count an open session that hears nothing as server activity, so idle culling (jupyterhub-idle-culler, "
        "shutdown_no_activity_timeout) spares the server; sessions producing events always count.",
    ).tag(config=True)
    activity_interval = Float(5.0, help="Seconds between updates of the server's last_activity from running sessions.").tag(config=True)


class ActivityReporter:
    def __init__(self, supervisor: Any, settings: MutableMapping[str, Any], *, interval: float, idle_keeps_alive: bool) -> None:
        self.supervisor = supervisor
        self.settings = settings
        self.interval = interval
        self.idle_keeps_alive = idle_keeps_alive
        self._seen: dict[str, int] = {}
        self._active: list[str] = []
        self._task: asyncio.Task | None = None

    def poll(self) -> list[str]:
        """Sessions active since the last poll; stamps the settings key when there are any."""
        seen, active = {}, []
        for s in self.supervisor.list():
            seen[s.id] = s.seq
            if s.seq != self._seen.get(s.id) or (self.idle_keeps_alive and s.state in ("starting", "running")):
                active.append(s.id)
        self._seen, self._active = seen, active
        if active:
            self.settings[SETTINGS_KEY] = utcnow()
        return active

    def current(self) -> list[str]:
        """For ExtensionApp.current_activity (shutdown_no_activity asks it)."""
        return list(self._active)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="loquilex-activity")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                self.poll()
            except Exception:
                log.exception("loquilex activity poll failed")
            await asyncio.sleep(self.interval)
