"""Thin REST and WebSocket handlers; the SessionManager and the Hub do the work."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from jupyter_server.auth.decorator import authorized, ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.websocket import WebSocketHandler

from loquilex_nb.core.config import caption_file
from loquilex_nb.core.errors import SessionEnded
from loquilex_nb.core.protocol import BAD_JSON, CLOSE_POLICY, CLOSE_TRY_LATER, CLOSE_UNKNOWN_SESSION, TOO_BIG, envelope, http_error
from loquilex_nb.supervisor.session import Session

from .hub import Connection
from .manager import SessionManager

AUTH_RESOURCE = "loquilex"
MAX_BODY = 64 * 1024  # a session request is a few hundred bytes
# each client message needs the action of its REST twin (GET / POST finalize / DELETE)
WS_ACTIONS = {"hello": "read", "ack": "read", "hb": "read", "pcm": "write", "finalize": "write", "stop": "write"}
CONTENT_TYPES = {
    "vtt": "text/vtt; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "txt": "text/plain; charset=utf-8",
}


class BaseHandler(APIHandler):
    auth_resource = AUTH_RESOURCE

    def initialize(self, manager: SessionManager) -> None:
        self.manager = manager

    def fail(self, status: int, code: str, message: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": code, "message": message}))

    def fail_for(self, exc: Exception) -> None:
        """Answer an exception the protocol names (core.protocol.HTTP_ERRORS); others are bugs."""
        answer = http_error(exc)
        if answer is None:
            raise exc
        self.fail(*answer, str(exc))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": f"http-{status_code}", "message": message}))

    def session_or_404(self, sid: str):
        session = self.manager.get(sid)
        if session is None:
            raise web.HTTPError(404, f"no session {sid!r}")
        return session


class SessionsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        sessions = self.manager.supervisor.list(include_ended=True)
        self.finish({"sessions": [s.info() for s in sessions]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        if len(self.request.body or b"") > MAX_BODY:
            return self.fail(*TOO_BIG, f"the request body is over {MAX_BODY} bytes")
        try:
            body = json.loads(self.request.body or b"{}")
        except (ValueError, RecursionError):
            return self.fail(*BAD_JSON, "the request body is not valid JSON (or nested too deeply)")
        try:
            session = await self.manager.create(body)
        except (ValueError, RuntimeError) as exc:
            return self.fail_for(exc)
        self.set_status(201)
        self.finish(session.info())


class SessionHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, sid: str) -> None:
        self.finish(self.session_or_404(sid).info())

    @web.authenticated
    @authorized
    async def delete(self, sid: str) -> None:
        session = self.session_or_404(sid)
        await session.stop()
        self.finish(session.info())


class FinalizeHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def post(self, sid: str) -> None:
        session = self.session_or_404(sid)
        try:
            await session.finalize()
        except SessionEnded as exc:
            return self.fail_for(exc)
        self.set_status(204)
        self.finish()


class CaptionsHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self, sid: str, fmt: str) -> None:
        session = self.session_or_404(sid)
        if fmt not in session.config.formats:
            raise web.HTTPError(404, f"session {sid!r} does not write {fmt} captions")
        path = f"{session.config.out_dir}/{caption_file(fmt)}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            raise web.HTTPError(404, f"no {fmt} captions for session {sid!r}") from None
        self.finish(text, set_content_type=CONTENT_TYPES[fmt])


class ResourcesHandler(BaseHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.finish(self.manager.resources())


class NotFoundHandler(BaseHandler):
    """Any other URL under /loquilex: a JSON 404, not Jupyter's HTML page."""

    @web.authenticated
    def get(self, *args: Any, **kwargs: Any) -> None:
        raise web.HTTPError(404, f"no loquilex route {self.request.path!r}")

    post = put = delete = patch = head = get


class EventsHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """The session's event stream; origin checks and ping/pong as jupyter_server's own sockets."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, manager: SessionManager) -> None:
        self.manager = manager
        self.conn: Connection | None = None
        self._session: Session | None = None
        self.registered = False
        self._hello_timer: asyncio.TimerHandle | None = None

    @property
    def session(self) -> Session:
        """The session `get` found; tornado calls nothing else of ours before it."""
        assert self._session is not None
        return self._session

    @property
    def max_message_size(self) -> int:
        """Tornado reads a whole frame before on_message: cap it near our own limit, not 10 MiB."""
        return 2 * self.manager.hub.limits.max_message_bytes + 65536

    async def allowed(self, action: str) -> bool:
        return bool(await _maybe_await(self.authorizer.is_authorized(self, self.current_user, action, AUTH_RESOURCE)))

    def set_default_headers(self) -> None:
        """JupyterHandler's headers make no sense for a WebSocket upgrade."""

    @ws_authenticated
    async def get(self, sid: str) -> None:
        if not await self.allowed("read"):  # watching is GET's twin; sending is checked per message
            raise web.HTTPError(403)
        session = self.manager.get(sid)
        if session is None:
            raise web.HTTPError(404, f"no session {sid!r}")  # refused before any state exists
        self._session = session
        await super().get(sid)

    async def open(self, sid: str) -> None:
        super().open()  # jupyter_server's ping loop
        hub = self.manager.hub
        refused = hub.admit_socket(sid, self)
        if refused:
            self.close(CLOSE_TRY_LATER, refused)
            return
        self.registered = True
        self._hello_timer = asyncio.get_running_loop().call_later(hub.limits.hello_timeout, self._no_hello)

    def _no_hello(self) -> None:
        self._hello_timer = None
        if self.conn is None:
            self.close(CLOSE_POLICY, f"no hello within {self.manager.hub.limits.hello_timeout:g} s")

    async def on_message(self, message: str | bytes) -> None:
        limits = self.manager.hub.limits
        conn = self.conn
        if not self.registered:
            return
        if conn is None:
            return await self._hello(message)
        conn.touch()
        size = _size(message)
        if size > limits.max_message_bytes:
            conn.error("too-big", f"message of {size} bytes exceeds {limits.max_message_bytes}")
            return
        if not conn.allow_message():
            conn.error("rate-limit", f"more than {limits.max_messages_per_second:g} messages per second")
            return
        if isinstance(message, bytes):
            if await self._forbidden(conn, "pcm"):
                return
            return await self._pcm(conn, message)
        try:
            msg = json.loads(message)
            kind = msg["type"]
        except (ValueError, KeyError, TypeError, RecursionError):
            conn.error("bad-message", "messages are JSON objects with a 'type'")
            return
        if isinstance(kind, str) and await self._forbidden(conn, kind):
            return
        if kind == "hb":
            return
        if kind == "ack":
            seq = msg.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool) and 0 <= seq <= self.session.seq:
                conn.acked = max(conn.acked, seq)
            else:
                conn.error("bad-ack", f"ack seq must be a whole number up to {self.session.seq}")
            return
        if kind == "finalize":
            try:
                await self.session.finalize()
            except SessionEnded as exc:
                conn.error("session-ended", str(exc))
            return
        if kind == "stop":
            self.manager.spawn(self.session.stop(), name=f"loquilex-ws-stop-{self.session.id}")
            return
        conn.error("unknown-type", f"unknown message type {str(kind)[:40]!r}")

    async def _forbidden(self, conn: Connection, kind: str) -> bool:
        action = WS_ACTIONS.get(kind)
        if action is None or action == "read" or await self.allowed(action):
            return False
        conn.error("forbidden", f"{kind!r} needs {action!r} permission on {AUTH_RESOURCE!r}")
        return True

    async def _hello(self, message: str | bytes) -> None:
        try:
            if isinstance(message, bytes) or _size(message) > self.manager.hub.limits.max_message_bytes:
                raise ValueError
            msg = json.loads(message)
            if msg.get("type") != "hello":
                raise ValueError
            last_seq = msg.get("last_seq", 0) or 0
            token = msg.get("resume_token")
            if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
                raise ValueError
            if token is not None and not isinstance(token, str):
                raise ValueError
        except (ValueError, AttributeError, TypeError, RecursionError):
            self.close(CLOSE_POLICY, "the first message must be hello {last_seq?, resume_token?}")
            return
        self._cancel_hello_timer()
        if self.manager.get(self.session.id) is not self.session:
            # forgotten (its replay window passed) while this socket waited to say hello:
            # a channel now would pin a session the server no longer lists
            self.close(CLOSE_UNKNOWN_SESSION, f"no session {self.session.id!r}")
            return
        limits = self.manager.hub.limits
        conn = self.manager.hub.connection(self.session, self.write_message, self.close)
        self.conn = conn
        welcome = {
            "resume_token": conn.token,
            "hb_interval": limits.heartbeat_interval,
            "hb_timeout": limits.heartbeat_timeout,
            "replay_window": limits.replay_window,
            "limits": {
                "max_message_bytes": limits.max_message_bytes,
                "max_messages_per_second": limits.max_messages_per_second,
                "send_queue_limit": limits.send_queue_limit,
                "max_audio_writers": limits.max_audio_writers,
                "max_bytes_in_flight": limits.max_bytes_in_flight,
            },
            "session": self.session.info(),
        }
        await self.write_message(json.dumps(envelope("welcome", self.session.id, None, welcome)))
        conn.channel.attach(conn, last_seq, token)

    async def _pcm(self, conn: Connection, data: bytes) -> None:
        if self.session.config.source.get("kind") != "push":
            conn.error("not-push", "binary frames (PCM) are only for push sessions")
            return
        if len(data) % 2:
            conn.error("bad-pcm", "PCM frames must be int16 little-endian (even length)")
            return
        hub = self.manager.hub
        if not conn.channel.claim_writer(conn):
            conn.error("writer-busy", f"another connection feeds this session's audio (at most {hub.limits.max_audio_writers})", counted=False)
            return
        busy = hub.audio_budget(self.session, len(data))
        if busy:
            conn.audio_dropped += 1
            conn.error("audio-dropped", f"frame dropped: {busy}; {conn.audio_dropped} frames dropped so far", counted=False)
            return
        hub.bytes_in_flight += len(data)
        conn.held = True
        try:
            # awaited: tornado reads this socket's next frame only after the pipe took this one
            await self.session.feed(data, "s16le")
        except SessionEnded as exc:
            conn.error("session-ended", str(exc))
        finally:
            hub.bytes_in_flight -= len(data)
            conn.held = False
            conn.touch()  # its next message waited on us, not on the client

    def _cancel_hello_timer(self) -> None:
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None

    def on_close(self) -> None:
        self._cancel_hello_timer()
        if self.registered:
            self.registered = False
            self.manager.hub.forget_socket(self.path_kwargs.get("sid", ""), self)
        if self.conn is not None:
            # any drop before eos may be resumed, including a laggard we cut off (4008)
            clean = self.conn.finished or self.manager.hub.closing
            self.manager.hub.disconnected(self.conn, clean)
            self.conn = None


def _size(message: str | bytes) -> int:
    """Bytes on the wire: a limit counted in characters would let UTF-8 text through at 4x."""
    return len(message) if isinstance(message, bytes) else len(message.encode("utf-8", "surrogatepass"))


async def _maybe_await(value):
    if hasattr(value, "__await__"):
        return await value
    return value


def handlers(manager: SessionManager) -> list[tuple[str, type, dict]]:
    kw = {"manager": manager}
    sid = r"(?P<sid>[A-Za-z0-9_-]{1,64})"
    return [
        (r"/loquilex/api/sessions", SessionsHandler, kw),
        (rf"/loquilex/api/sessions/{sid}", SessionHandler, kw),
        (rf"/loquilex/api/sessions/{sid}/finalize", FinalizeHandler, kw),
        (rf"/loquilex/api/sessions/{sid}/captions\.(?P<fmt>vtt|srt|txt)", CaptionsHandler, kw),
        (rf"/loquilex/api/sessions/{sid}/events", EventsHandler, kw),
        (r"/loquilex/api/resources", ResourcesHandler, kw),
    ]


def not_found(manager: SessionManager) -> tuple[str, type, dict]:
    """Our other URLs answer JSON too. Tornado takes the first match: register it last,
    after every module's routes (the lease's too)."""
    return (r"/loquilex/(?P<rest>.*)", NotFoundHandler, {"manager": manager})
