"""The `loquilex` Jupyter server extension: one supervisor on the server's event loop."""

from __future__ import annotations

import asyncio
import os

from jupyter_server.extension.application import ExtensionApp
from jupyter_server.serverapp import ServerApp
from traitlets import Float, Unicode, default

from .activity import ActivityKnobs, ActivityReporter
from .handlers import handlers, not_found
from .hub import Limits
from .hubsignals import route_sigint_to_stop
from .lease import BrowserLeases, LeaseKnobs, lease_handlers
from .manager import SessionKnobs, SessionManager


class LoquilexApp(ExtensionApp, SessionKnobs, Limits, LeaseKnobs, ActivityKnobs):
    """Every knob is a traitlet of this app (`LoquilexApp.<name>`); each is declared by the object
    that uses it (the Knobs classes this app inherits), so its name, default and help live once."""

    name = "loquilex"
    load_other_extensions = True

    output_root = Unicode(help="Where caption folders go (default: loquilex-captions under the server's root_dir).").tag(config=True)
    stop_timeout = Float(20.0, help="Upper bound on stop_extension.").tag(config=True)

    @property
    def server(self) -> ServerApp:
        """The server that loaded us (jupyter_server sets it before any of our hooks run)."""
        assert self.serverapp is not None
        return self.serverapp

    @default("output_root")
    def _default_output_root(self) -> str:
        return os.path.join(self.server.root_dir, "loquilex-captions")

    def initialize_settings(self) -> None:
        self.manager = SessionManager(
            root_dir=self.server.root_dir,
            output_root=self.output_root,
            limits=Limits(**Limits.of(self)),
            kernel_manager=self.server.kernel_manager,
            event_logger=self.server.event_logger,
            **SessionKnobs.of(self),
        )
        self.settings["loquilex_manager"] = self.manager
        self.leases = BrowserLeases(self.manager, self.browser_lease)

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers(self.manager))
        self.handlers.extend(lease_handlers(self.manager, self.leases))
        self.handlers.append(not_found(self.manager))

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        self.manager.start()
        route_sigint_to_stop(serverapp, self.log)  # after jupyter_server's init_signal
        self.activity = ActivityReporter(self.manager.supervisor, serverapp.web_app.settings, interval=self.activity_interval, idle_keeps_alive=self.idle_sessions_keep_alive)
        self.activity.start()

    def current_activity(self):
        activity = getattr(self, "activity", None)
        return activity.current() if activity is not None else None

    async def stop_extension(self) -> None:
        """Stop every session and close every socket, bounded in time; never raises."""
        try:
            if getattr(self, "activity", None) is not None:
                await self.activity.aclose()
            await self.leases.aclose()
            await asyncio.wait_for(self.manager.shutdown(self.stop_timeout), self.stop_timeout)
        except BaseException as exc:  # an exception here can keep the server from exiting
            self.log.error("loquilex: stop_extension did not finish cleanly: %r", exc)
