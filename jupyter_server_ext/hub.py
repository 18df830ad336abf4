"""WebSocket fan-out: per-session channels, per-connection bounded queues and sender tasks.

Ownership: the Hub owns channels; a Channel owns its connections' registrations and the
resume pins; a Connection owns one WebSocket, its send queue and its one sender task.
A slow client only ever fills its own queue; when that is full it is closed (4008).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from typing import Any, Callable

from traitlets import Float, Int

from loquilex_nb.core.events import Event
from loquilex_nb.core.protocol import (
    CLOSE_ENDED,
    CLOSE_HB_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_REPLACED,
    CLOSE_SHUTDOWN,
    CLOSE_SLOW,
    envelope,
    event_envelope,
)
from loquilex_nb.supervisor.session import Session

from .knobs import Knobs

log = logging.getLogger("loquilex.server")

MAX_ERRORS = 20
SNAPSHOT_FINALS = 50


class Limits(Knobs):
    """Every bound the hub and the socket handler keep (LoquilexApp's traitlets of the same names)."""

    heartbeat_interval = Float(10.0, help="Seconds between server heartbeats on each WebSocket.").tag(config=True)
    heartbeat_timeout = Float(60.0, help="A WebSocket silent for this long is closed (4009).").tag(config=True)
    replay_window = Float(60.0, help="Seconds a dropped client can resume without a gap, from the disconnect.").tag(config=True)
    send_queue_limit = Int(1000, help="Messages queued per WebSocket before the client is cut off (4008).").tag(config=True)
    max_message_bytes = Int(1 << 20, help="Largest client message accepted.").tag(config=True)
    max_messages_per_second = Float(400.0, help="Client messages per second per WebSocket (token bucket).").tag(config=True)
    # against hostile or careless clients (issue 9)
    hello_timeout = Float(10.0, help="A WebSocket that sends no hello within this many seconds is closed (1008).").tag(config=True)
    max_connections = Int(256, help="WebSockets open at once in this server, over all sessions (more are closed with 1013).").tag(config=True)
    max_connections_per_session = Int(32, help="WebSockets open at once to one session (more are closed with 1013).").tag(config=True)
    max_audio_writers = Int(1, help="Connections that may feed audio to one push session; others get a writer-busy error.").tag(config=True)
    max_bytes_in_flight = Int(4 << 20, help="PCM bytes accepted for one session and not yet taken by its worker; frames past it are dropped with an audio-dropped error.").tag(config=True)
    max_total_bytes_in_flight = Int(64 << 20, help="The same bound over all sessions of this server.").tag(config=True)


def snapshot(session: Session) -> dict[str, Any]:
    return {
        "state": session.state,
        "finals": [event_envelope(e) for e in session.finals[-SNAPSHOT_FINALS:]],
        "revisions": [event_envelope(e) for e in session.revisions[-SNAPSHOT_FINALS:]],
        "partial": event_envelope(session.partial) if session.partial is not None else None,
    }


class Connection:
    """One client socket. `send_text` / `close_socket` are the handler's; everything else is ours."""

    def __init__(self, channel: "Channel", send_text: Callable[[str], Any], close_socket: Callable[[int, str], None], limits: Limits) -> None:
        self.channel = channel
        self.limits = limits
        self.token = secrets.token_urlsafe(16)
        self._send_text = send_text
        self._close_socket = close_socket
        self._replay: list[dict[str, Any]] = []
        self._queue: deque[tuple[dict[str, Any], str | None]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.closed = False
        self.finished = False  # eos was written: nothing left to resume
        self.last_recv = time.monotonic()
        self.last_sent_seq = 0
        self.acked = 0
        self.dropped = 0
        self.errors = 0
        self.audio_dropped = 0
        self.held = False  # we are holding back this client's audio (backpressure): not silent
        self._bucket = limits.max_messages_per_second
        self._bucket_t = time.monotonic()

    # -- inbound bookkeeping --------------------------------------------------------------
    def touch(self) -> None:
        self.last_recv = time.monotonic()

    def silent_for(self) -> float:
        return 0.0 if self.held else time.monotonic() - self.last_recv

    def allow_message(self) -> bool:
        """Token bucket: at most max_messages_per_second on average, bursts of one second."""
        now = time.monotonic()
        rate = self.limits.max_messages_per_second
        self._bucket = min(rate, self._bucket + (now - self._bucket_t) * rate)
        self._bucket_t = now
        if self._bucket < 1.0:
            return False
        self._bucket -= 1.0
        return True

    def error(self, code: str, detail: str, counted: bool = True) -> None:
        """`counted`: a client fault (too many close the socket); not for limits it may hit."""
        self.errors += counted
        self.enqueue(envelope("error", self.channel.sid, None, {"code": code, "detail": detail}))
        if self.errors >= MAX_ERRORS:
            self.close(CLOSE_POLICY, "too many bad messages")

    # -- outbound ---------------------------------------------------------------------------
    def start(self, replay: list[dict[str, Any]]) -> None:
        self._replay = replay
        self._task = asyncio.create_task(self._sender(), name=f"loquilex-ws-sender-{self.channel.sid}")

    def enqueue(self, env: dict[str, Any], text: str | None = None) -> None:
        if self.closed:
            return
        if env["type"] == "asr.partial":
            seg = env["data"].get("segment_id")
            for i, (queued, _) in enumerate(self._queue):
                if queued["type"] == "asr.partial" and queued["data"].get("segment_id") == seg:
                    # latest partial wins; its seq stays that of the newest one
                    self._queue[i] = (env, text)
                    self.dropped += 1
                    self._wake.set()
                    return
        if len(self._queue) >= self.limits.send_queue_limit:
            self.dropped += 1
            self.close(CLOSE_SLOW, "client too slow")
            return
        self._queue.append((env, text))
        self._wake.set()

    async def _sender(self) -> None:
        try:
            replay, self._replay = self._replay, []
            for env in replay:
                await self._write(env)
                if env["type"] == "eos":
                    return self._finish()
            while not self.closed:
                if self.silent_for() > self.limits.heartbeat_timeout:
                    # checked on every turn: a busy stream must not hide a silent client
                    self.close(CLOSE_HB_TIMEOUT, "heartbeat timeout")
                    return
                if not self._queue:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.limits.heartbeat_interval)
                    except asyncio.TimeoutError:
                        self._heartbeat()
                    continue
                env, text = self._queue.popleft()
                await self._write(env, text)
                if env["type"] == "eos":
                    return self._finish()
        except Exception as exc:  # the socket went away under us: that is a close, not an error
            log.debug("sender of %s stopped: %r", self.channel.sid, exc)
            self.close(CLOSE_SHUTDOWN, "send failed")

    def _finish(self) -> None:
        self.finished = True
        self.close(CLOSE_ENDED, "session ended")

    def _heartbeat(self) -> None:
        if self.silent_for() > self.limits.heartbeat_timeout:
            self.close(CLOSE_HB_TIMEOUT, "heartbeat timeout")
            return
        self._queue.append((envelope("hb", self.channel.sid, None, {"queue_depth": len(self._queue), "dropped": self.dropped}), None))
        self._wake.set()

    async def _write(self, env: dict[str, Any], text: str | None = None) -> None:
        await self._send_text(text if text is not None else json.dumps(env, separators=(",", ":")))
        if env.get("seq"):
            self.last_sent_seq = max(self.last_sent_seq, env["seq"])

    # -- closing ----------------------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """Close the socket; the handler's on_close then calls Channel.detach."""
        if self.closed:
            return
        self.closed = True
        self._wake.set()
        try:
            self._close_socket(code, reason)
        except Exception:  # already closed by the peer
            pass

    async def aclose(self) -> None:
        self.closed = True
        self._wake.set()
        if self._task is not None:
            if not self._task.done():
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Channel:
    """The hub's state for one session: live connections and resume pins."""

    def __init__(self, hub: "Hub", session: Session) -> None:
        self.hub = hub
        self.session = session
        self.sid = session.id
        self.connections: set[Connection] = set()
        self.writers: set[Connection] = set()  # connections that sent audio (push sessions)
        self.pins: dict[str, tuple[int, float]] = {}  # token -> (seq, expires at)
        self.last_heard = 0.0  # the last message of a client that has since gone
        self._unsubscribe = session.subscribe(self._on_event)

    def _on_event(self, ev: Event) -> None:
        env = event_envelope(ev)
        text = json.dumps(env, separators=(",", ":"))  # once per event, not per client
        for conn in list(self.connections):
            conn.enqueue(env, text)

    def attach(self, conn: Connection, last_seq: int, token: str | None) -> None:
        """Queue what the client missed and register it for live events, with no await between."""
        session = self.session
        replay: list[dict[str, Any]] = []
        pin = self.pins.pop(token, None) if token else None
        pinned = pin is not None and pin[1] >= time.monotonic()
        stale = next((c for c in self.connections if token and c.token == token), None)
        if stale is not None:
            # the client reconnected before we noticed its old socket died (half-open TCP)
            pinned = True
            self.connections.discard(stale)
            stale.finished = True  # replaced: no pin for it
            stale.close(CLOSE_REPLACED, "replaced by a newer connection")
        events, gap = session.events_after(last_seq)
        if last_seq > 0 and not pinned:
            if session.seq > last_seq:
                replay.append(envelope("gap", self.sid, None, {"from_seq": last_seq + 1, "to_seq": session.seq, "snapshot": snapshot(session)}))
            events = []
        elif gap and events:
            replay.append(envelope("gap", self.sid, None, {"from_seq": last_seq + 1, "to_seq": events[0].seq - 1, "snapshot": snapshot(session)}))
        replay.extend(event_envelope(e) for e in events)
        self.connections.add(conn)
        conn.start(replay)

    def claim_writer(self, conn: Connection) -> bool:
        """At most `max_audio_writers` connections feed audio; the first ones to send keep it."""
        if conn in self.writers:
            return True
        self.writers = {c for c in self.writers if not c.closed}
        if len(self.writers) >= self.hub.limits.max_audio_writers:
            return False
        self.writers.add(conn)
        return True

    def heard_at(self, now: float) -> float:
        """When a client of this session was last heard (now for one held by backpressure)."""
        return max([self.last_heard, *(now if c.held else c.last_recv for c in self.connections if not c.closed)])

    def detach(self, conn: Connection, clean: bool) -> None:
        self.last_heard = max(self.last_heard, conn.last_recv)
        self.connections.discard(conn)
        self.writers.discard(conn)
        if not clean:
            seq = conn.acked or conn.last_sent_seq
            self.pins[conn.token] = (seq, time.monotonic() + conn.limits.replay_window)

    def expired(self, now: float, replay_window: float) -> bool:
        self.pins = {t: p for t, p in self.pins.items() if p[1] >= now}
        ended = self.session.ended_at
        return (
            not self.connections
            and not self.pins
            and ended is not None
            and now - ended >= replay_window
        )

    def release(self) -> None:
        self._unsubscribe()


class Hub:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.channels: dict[str, Channel] = {}
        self.closing = False
        self._closing: set[asyncio.Task] = set()
        # every open socket by session id, hello or not: counted against the connection
        # limits and closed at shutdown (1001) like the ones that said hello
        self.sockets: dict[str, set[Any]] = {}
        self.bytes_in_flight = 0

    # -- sockets before and after hello ----------------------------------------------------
    def admit_socket(self, sid: str, sock: Any) -> str | None:
        """Register an opened socket; returns why it must be refused, or None."""
        if self.closing:
            return "server shutting down"
        total = sum(len(v) for v in self.sockets.values())
        if total >= self.limits.max_connections:
            return f"too many connections ({self.limits.max_connections} in all)"
        if len(self.sockets.get(sid, ())) >= self.limits.max_connections_per_session:
            return f"too many connections to this session ({self.limits.max_connections_per_session})"
        self.sockets.setdefault(sid, set()).add(sock)
        return None

    def forget_socket(self, sid: str, sock: Any) -> None:
        socks = self.sockets.get(sid)
        if socks is not None:
            socks.discard(sock)
            if not socks:
                del self.sockets[sid]

    def audio_budget(self, session: Session, n: int) -> str | None:
        """Why `n` more bytes of PCM cannot be in flight now, or None."""
        if session.bytes_in_flight + n > self.limits.max_bytes_in_flight:
            return f"{session.bytes_in_flight} bytes of audio are still in flight to this session (limit {self.limits.max_bytes_in_flight})"
        if self.bytes_in_flight + n > self.limits.max_total_bytes_in_flight:
            return f"{self.bytes_in_flight} bytes of audio are in flight in this server (limit {self.limits.max_total_bytes_in_flight})"
        return None

    def channel(self, session: Session) -> Channel:
        ch = self.channels.get(session.id)
        if ch is None:
            ch = self.channels[session.id] = Channel(self, session)
        return ch

    def connection(self, session: Session, send_text, close_socket) -> Connection:
        return Connection(self.channel(session), send_text, close_socket, self.limits)

    def disconnected(self, conn: Connection, clean: bool) -> None:
        conn.channel.detach(conn, clean)
        task = asyncio.create_task(conn.aclose(), name="loquilex-ws-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def sweep(self, now: float) -> list[str]:
        """Forget channels of ended sessions nobody can resume any more; returns their ids."""
        gone = [sid for sid, ch in self.channels.items() if ch.expired(now, self.limits.replay_window)]
        for sid in gone:
            self.channels.pop(sid).release()
        return gone

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until every connection has sent its eos and closed."""
        deadline = time.monotonic() + timeout
        while any(ch.connections for ch in self.channels.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def shutdown(self) -> None:
        self.closing = True
        for socks in list(self.sockets.values()):
            for sock in list(socks):
                sock.close(CLOSE_SHUTDOWN, "server shutting down")  # sockets that never said hello too
        for ch in list(self.channels.values()):
            for conn in list(ch.connections):
                conn.close(CLOSE_SHUTDOWN, "server shutting down")
        for ch in list(self.channels.values()):
            for conn in list(ch.connections):
                ch.detach(conn, clean=True)
                await conn.aclose()
            ch.release()
        self.channels.clear()
        if self._closing:
            await asyncio.gather(*list(self._closing), return_exceptions=True)
