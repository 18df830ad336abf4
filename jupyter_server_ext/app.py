"""The `loquilex` Jupyter server extension: one supervisor on the server's event loop."""

from __future__ import annotations

import asyncio
import os

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, TraitError, Unicode, default, validate

from loquilex_nb.supervisor.runtime import check_max_sessions
from loquilex_nb.supervisor.supervisor import Supervisor

from .activity import ActivityReporter
from .handlers import handlers, not_found
from .hubsignals import route_sigint_to_stop
from .hub import Limits
from .lease import BrowserLeases, lease_handlers
from .manager import SessionManager


class LoquilexApp(ExtensionApp):
    name = "loquilex"
    load_other_extensions = True

    max_sessions = Int(8, help="Sessions that may run at once in this server.").tag(config=True)
    output_root = Unicode(help="Where caption folders go (default: loquilex-captions under the server's root_dir).").tag(config=True)
    model = Unicode("", help="CTranslate2 Whisper model directory (default: the bundled tiny.en).").tag(config=True)
    stop_grace = Float(3.0, help="Seconds a worker gets to finish after a polite stop before SIGTERM.").tag(config=True)
    term_grace = Float(2.0, help="Seconds after SIGTERM before SIGKILL.").tag(config=True)
    heartbeat_interval = Float(10.0, help="Seconds between server heartbeats on each WebSocket.").tag(config=True)
    heartbeat_timeout = Float(60.0, help="A WebSocket silent for this long is closed (4009).").tag(config=True)
    replay_window = Float(60.0, help="Seconds a dropped client can resume without a gap, from the disconnect.").tag(config=True)
    replay_capacity = Int(10000, help="Events kept per session for late joiners and resume.").tag(config=True)
    send_queue_limit = Int(1000, help="Messages queued per WebSocket before the client is cut off (4008).").tag(config=True)
    max_message_bytes = Int(1 << 20, help="Largest client message accepted.").tag(config=True)
    max_messages_per_second = Float(400.0, help="Client messages per second per WebSocket (token bucket).").tag(config=True)
    sweep_interval = Float(2.0, help="Seconds between checks for sessions whose kernel died or was culled.").tag(config=True)
    stop_timeout = Float(20.0, help="Upper bound on stop_extension.").tag(config=True)
    stop_on_kernel_restart = Bool(True, help="Stop a kernel's sessions when it restarts.").tag(config=True)
    idle_sessions_keep_alive = Bool(False, help="Count an open session that hears nothing as server activity, so idle culling (jupyterhub-idle-culler, shutdown_no_activity_timeout) spares the server; sessions producing events always count.").tag(config=True)
    activity_interval = Float(5.0, help="Seconds between updates of the server's last_activity from running sessions.").tag(config=True)

    # -- limits against hostile or careless clients (issue 9) --
    hello_timeout = Float(10.0, help="A WebSocket that sends no hello within this many seconds is closed (1008).").tag(config=True)
    max_connections = Int(256, help="WebSockets open at once in this server, over all sessions (more are closed with 1013).").tag(config=True)
    max_connections_per_session = Int(32, help="WebSockets open at once to one session (more are closed with 1013).").tag(config=True)
    max_audio_writers = Int(1, help="Connections that may feed audio to one push session; others get a writer-busy error.").tag(config=True)
    max_bytes_in_flight = Int(4 << 20, help="PCM bytes accepted for one session and not yet taken by its worker; frames past it are dropped with an audio-dropped error.").tag(config=True)
    max_total_bytes_in_flight = Int(64 << 20, help="The same bound over all sessions of this server.").tag(config=True)
    # the JupyterLab extension's microphone sessions (jupyter_server_ext/lease.py)
    browser_lease = Float(10.0, help="A browser session no client was heard from for this many seconds is stopped.").tag(config=True)

    @validate("max_sessions")
    def _check_max_sessions(self, proposal):
        try:  # the rule of lx.configure(max_sessions=...) in embedded mode
            return check_max_sessions(proposal["value"], "LoquilexApp.max_sessions")
        except ValueError as exc:
            raise TraitError(str(exc)) from None

    @default("output_root")
    def _default_output_root(self) -> str:
        return os.path.join(self.serverapp.root_dir, "loquilex-captions")

    def initialize_settings(self) -> None:
        limits = Limits(
            hb_interval=self.heartbeat_interval,
            hb_timeout=self.heartbeat_timeout,
            replay_window=self.replay_window,
            send_queue_limit=self.send_queue_limit,
            max_message_bytes=self.max_message_bytes,
            max_messages_per_second=self.max_messages_per_second,
            hello_timeout=self.hello_timeout,
            max_connections=self.max_connections,
            max_connections_per_session=self.max_connections_per_session,
            max_audio_writers=self.max_audio_writers,
            max_bytes_in_flight=self.max_bytes_in_flight,
            max_total_bytes_in_flight=self.max_total_bytes_in_flight,
        )
        supervisor = Supervisor(
            max_sessions=self.max_sessions,
            grace=self.stop_grace,
            term_grace=self.term_grace,
            log_capacity=self.replay_capacity,
        )
        self.manager = SessionManager(
            root_dir=self.serverapp.root_dir,
            output_root=self.output_root,
            model=self.model or None,
            supervisor=supervisor,
            limits=limits,
            kernel_manager=self.serverapp.kernel_manager,
            event_logger=self.serverapp.event_logger if self.stop_on_kernel_restart else None,
            sweep_interval=self.sweep_interval,
            stop_on_kernel_restart=self.stop_on_kernel_restart,
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
