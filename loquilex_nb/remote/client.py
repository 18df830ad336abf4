"""Server mode: sessions run by a Jupyter server's loquilex extension (docs/PROTOCOL.md).

`RemoteBackend` plugs into `api.Session` like `EmbeddedBackend`; `RemoteSessionCore` offers
the async interface of `session.Session` on the private loop thread, backed by REST calls
and one WebSocket that reconnects on its own so the handle never sees a lost or duplicated
event. Nothing here may block that loop: all network I/O is tornado's async clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable
from urllib.parse import urlsplit

import numpy as np
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from . import discovery
from ..core.config import FORMATS, parse_formats
from ..core.errors import SessionEnded, SessionLimitError
from ..core.eventlog import EventLog, EventLogView
from ..core.events import EVENT_TYPES, STATES, EndReason, Event
from ..core.sources import MicSource, PushSource, describe_source

log = logging.getLogger("loquilex_nb")

REQUEST_TIMEOUT = 30.0  # a DELETE answers only after the server's stop ladder
CONNECT_TIMEOUT = 5.0
RECONNECT_WINDOW = 10.0
SEND_WAIT = RECONNECT_WINDOW + CONNECT_TIMEOUT
STOP_WAIT = 30.0
CLOSE_STOP_TIMEOUT = 60.0
READER_EXIT = 2.0
LOG_CAPACITY = 10000
ACK_EVERY = 32
ACK_PERIOD = 0.5
MAX_INCOMING = 64 * 1024 * 1024  # a gap snapshot carries many finals, each with its words
# close codes after which resuming cannot help (docs/PROTOCOL.md, "Close codes")
FINAL_CLOSE = {1000: "session ended", 1008: "policy violation", 1009: "message too big", 4004: "unknown session"}
FIELDS = ("segment_id", "text", "t0", "t1", "words")
KERNEL_FILE = "_kernel_file"  # prepared, never sent: a file this kernel streams itself
FILE_CHUNK = 0.5  # seconds of audio per frame when a kernel streams a file
FEED_AHEAD = 8.0  # seconds of audio it may send beyond what the worker has reported (realtime=False)
FEED_QUIET = 2.0  # seconds without a new event after which it sends more anyway (silence says nothing)
FEED_TAIL = 1.5  # before the final stop: the worker has reported all but this much of the audio
FEED_END_QUIET = 6.0  # ... or said nothing for this long (a decode under load takes seconds)
OUTPUT_NAMES = {"partial": "partial.txt", "final": "final.txt", "vtt": "captions.vtt", "srt": "captions.srt"}


# -- wire conversions ------------------------------------------------------------------------
def event_from_envelope(env: dict[str, Any]) -> Event:
    """A domain-event envelope `{v, type, sid, seq, t_wall, t_mono, data: {fields…, data}}`."""
    body = env.get("data") or {}
    return Event(
        type=env["type"], sid=env["sid"], seq=int(env["seq"]),
        t_wall=float(env["t_wall"]), t_mono=float(env["t_mono"]),
        **{k: body.get(k) for k in FIELDS}, data=body.get("data"),
    )


def event_from_wire(d: dict[str, Any]) -> Event:
    """An event inside a gap snapshot: an envelope, or `Event.as_dict()` with flat fields."""
    body = d.get("data")
    if "v" in d or (isinstance(body, dict) and not any(k in d for k in FIELDS) and any(k in body for k in (*FIELDS, "data"))):
        return event_from_envelope(d)
    return Event.from_dict(d)


def end_from_dict(d: dict[str, Any]) -> EndReason:
    return EndReason(d.get("kind", "crashed"), d.get("exit_code"), d.get("detail") or "", tuple(d.get("stderr_tail") or ()))


def f32le_to_s16le(data: bytes) -> bytes:
    """The protocol carries int16 only; users may feed float32 in [-1, 1]."""
    if len(data) % 4:
        raise ValueError("float32 PCM must have a multiple of 4 bytes")
    x = np.clip(np.frombuffer(data, dtype="<f4"), -1.0, 1.0)
    return np.rint(x * 32767.0).astype("<i2").tobytes()


def _readable_audio(raw: str) -> str:
    """The absolute path of an audio file this process can open; ValueError before any process starts."""
    from ..core.audio import AudioError, iter_file_chunks

    path = describe_source(raw, True)["path"]
    chunks = iter_file_chunks(path, FILE_CHUNK)
    try:
        next(chunks, None)  # opens it and decodes its first frames
    except AudioError as exc:
        raise ValueError(str(exc)) from None
    finally:
        chunks.close()
    return path


def _payload(env: dict[str, Any]) -> dict[str, Any]:
    body = env.get("data")
    return body if isinstance(body, dict) else env


# -- backend ---------------------------------------------------------------------------------
class RemoteBackend:
    """Sessions run by the loquilex extension of a Jupyter server at `url`."""

    name = "server"

    def __init__(self, url: str, token: str | None, kernel_id: str | None = None, root_dir: str | os.PathLike | None = None) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"server url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/") + "/"
        self.token = token or None
        self.kernel_id = kernel_id
        self.root_dir = None if root_dir is None else Path(root_dir).expanduser()

    def __repr__(self) -> str:
        return f"<loquilex RemoteBackend {self.url} kernel={self.kernel_id}>"

    # -- prepare (caller's thread: validation only, no I/O) ------------------------------
    def prepare(self, source: Any, sid: str, options: dict[str, Any]) -> dict[str, Any]:
        opts = dict(options)
        realtime = opts.pop("realtime", True)
        if not isinstance(realtime, bool):
            raise ValueError(f"realtime must be True or False, got {realtime!r}")
        for key in ("output_root", "model", "owner"):
            if key in opts:
                raise ValueError(f"{key!r} cannot be set in server mode: the server decides it")
        body: dict[str, Any] = {"source": self._describe(source, realtime)}
        if body["source"]["kind"] == "kernel-file":
            # the server may not reach it: this kernel decodes it and streams it as push audio
            body[KERNEL_FILE] = body.pop("source")
            body["source"] = {"kind": "push"}
        out = opts.pop("out", None)
        if out is not None:
            body["out"] = os.fspath(out)
        # parsed here too because outputs need the list; the server validates everything else
        body["formats"] = list(parse_formats(opts.pop("formats", FORMATS)))
        body.update(opts)
        if self.kernel_id is not None:
            body.setdefault("kernel_id", self.kernel_id)
        try:
            json.dumps(body)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"session options must be plain JSON values in server mode: {exc}") from None
        return body

    def _describe(self, source: Any, realtime: bool) -> dict[str, Any]:
        if isinstance(source, PushSource):
            return {"kind": "push"}
        if isinstance(source, MicSource):
            raise ValueError("microphone sessions run in embedded mode only")
        if isinstance(source, (str, os.PathLike)):
            raw = os.fspath(source)
            if not isinstance(raw, str):
                raise ValueError(f"audio file path {raw!r} must be str, not bytes")
            server_path = self._server_path(raw)
            if server_path is None:
                return {"kind": "kernel-file", "path": _readable_audio(raw), "realtime": realtime}
            return {"kind": "file", "path": server_path, "realtime": realtime}
        raise ValueError(f"source must be a file path, lx.PushSource() or lx.MicSource(), got {type(source).__name__}")

    def _server_path(self, raw: str) -> str | None:
        """A path relative to the server's root_dir (relative input means the kernel's cwd);
        None for a file outside it, which the server must not read."""
        path = Path(raw).expanduser()
        if self.root_dir is None:
            return None if path.is_absolute() else path.as_posix()
        full = path if path.is_absolute() else Path.cwd() / path
        # lexical first (keeps the user's spelling), then resolved (root_dir behind a symlink)
        for p, root in ((Path(os.path.abspath(full)), Path(os.path.abspath(self.root_dir))), (full.resolve(), self.root_dir.resolve())):
            try:
                rel = p.relative_to(root)
            except ValueError:
                continue
            if not rel.parts:
                raise ValueError(f"audio source {raw!r} is the server's root_dir, not a file")
            return rel.as_posix()
        return None

    # -- REST (private loop only) ------------------------------------------------------
    def headers(self, json_body: bool = False) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if json_body:
            h["Content-Type"] = "application/json"
        if self.token:
            h["Authorization"] = f"token {self.token}"
        else:
            # a server without a token checks XSRF on writes; a matching cookie/header pair passes
            xsrf = uuid.uuid4().hex
            h["Cookie"] = f"_xsrf={xsrf}"
            h["X-XSRFToken"] = xsrf
        return h

    async def request(self, method: str, path: str, body: Any = None, timeout: float = REQUEST_TIMEOUT, *, prefix: str = "loquilex/api/") -> Any:
        req = HTTPRequest(
            self.url + prefix + path, method=method, headers=self.headers(body is not None),
            body=None if body is None else json.dumps(body), connect_timeout=min(timeout, CONNECT_TIMEOUT),
            request_timeout=timeout,
        )
        # one client per call: nothing pooled outlives a session on a loop that may stop
        client = AsyncHTTPClient(force_instance=True)
        try:
            resp = await client.fetch(req, raise_error=False)
        except (OSError, HTTPClientError) as exc:  # refused, reset, TLS, timeout (599)
            raise ConnectionError(f"cannot reach the loquilex server at {self.url}: {exc}") from exc
        finally:
            client.close()
        if resp.code == 599:
            raise ConnectionError(f"cannot reach the loquilex server at {self.url}: {resp.error}")
        text = resp.body.decode("utf-8", "replace") if resp.body else ""
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if resp.code < 400:
            return data
        message = data.get("message") if isinstance(data, dict) else None
        message = message or text.strip() or resp.reason or f"HTTP {resp.code}"
        if resp.code == 429:
            raise SessionLimitError(message)
        if resp.code in (401, 403):
            raise PermissionError(f"the loquilex server refused {method} {path} ({resp.code}): {message}")
        if resp.code < 500:
            raise ValueError(message)
        raise RuntimeError(f"the loquilex server failed on {method} {path} ({resp.code}): {message}")

    async def notebook_names(self, timeout: float = REQUEST_TIMEOUT) -> dict[str, str]:
        """kernel id -> the name of the notebook (or console) using it, from Jupyter's own /api/sessions."""
        sessions = await self.request("GET", "sessions", timeout=timeout, prefix="api/")
        return {
            s["kernel"]["id"]: s.get("name") or PurePosixPath(s.get("path") or "").name or s["kernel"]["id"]
            for s in sessions or () if isinstance(s, dict) and isinstance(s.get("kernel"), dict)
        }

    async def create(self, prepared: dict[str, Any], sid: str) -> "RemoteSessionCore":
        body = {k: v for k, v in prepared.items() if k != KERNEL_FILE}
        info = await self.request("POST", "sessions", body)
        core = RemoteSessionCore(self, info, prepared.get("formats") or FORMATS)
        try:
            await core.open()
            if KERNEL_FILE in prepared:
                core.feed_file(prepared[KERNEL_FILE]["path"], prepared[KERNEL_FILE]["realtime"])
        except BaseException as exc:
            # the server already runs it: without a socket it must still be stopped
            core._lose(f"event socket failed: {exc!r}")
            await asyncio.shield(asyncio.ensure_future(core.close()))
            if isinstance(exc, Exception):
                raise ConnectionError(f"session {core.id} started on {self.url} but its event socket failed ({exc}); it was stopped") from exc
            raise
        return core


# -- session core ----------------------------------------------------------------------------
class RemoteSessionCore(EventLogView):
    """One server session seen through its WebSocket; lives on the private loop thread.

    Its `seq` is the last event held, not the wire position: a gap may skip seqs that never arrive.
    """

    def __init__(self, backend: RemoteBackend, info: dict[str, Any], formats: Any = FORMATS) -> None:
        self.backend = backend
        self.id: str = info["id"]
        self.state: str = info.get("state") or "starting"
        self.pid: int | None = info.get("pid")
        self.end: EndReason | None = end_from_dict(info["end"]) if info.get("end") else None
        # also wakes waiters on what is not an event (socket up/down, closing)
        self.eventlog = EventLog(LOG_CAPACITY)
        self._info = info
        self._formats = tuple(formats)
        self._last_seq = 0  # wire position: hello's last_seq and the duplicate filter
        self._acked = 0
        self._ack_time = 0.0
        self._token: str | None = None
        self._hb_interval: float | None = None
        self._silence: float | None = None
        self._max_bytes = 1 << 20
        self._gap_s = 0.0
        self._next_send = 0.0
        self._opened_at = 0.0
        self._conn: WebSocketClientConnection | None = None
        self._done = asyncio.Event()
        self._lost = False
        self._closing = False
        self._reader: asyncio.Task | None = None
        self._hb: asyncio.Task | None = None
        self._stopper: asyncio.Task | None = None
        self._closer: asyncio.Task | None = None
        self._feeder: asyncio.Task | None = None
        self._heard = 0.0  # the furthest audio position (s) an event has covered

    # -- state the handle reads --------------------------------------------------------
    @property
    def alive(self) -> bool:
        return not self._done.is_set()

    @property
    def outputs(self) -> dict[str, Path]:
        if not self._info.get("out_dir"):
            return {}
        out = Path(self._info["out_dir"])
        wanted = {"partial"} | {{"txt": "final"}.get(f, f) for f in self._formats}
        return {k: out / v for k, v in OUTPUT_NAMES.items() if k in wanted}

    def _notify(self) -> None:
        self.eventlog.notify()

    async def _wait_until(self, pred: Callable[[], bool], timeout: float | None) -> bool:
        return await self.eventlog.wait_until(pred, timeout)

    def _finish(self, end: EndReason, *, lost: bool = False, override: bool = False) -> None:
        if self._done.is_set() and not override:
            return
        self.end, self._lost = end, lost
        if lost:
            self.state = "failed"
        elif self.state not in ("stopped", "failed"):
            self.state = "failed" if end.kind == "crashed" else "stopped"
        self._done.set()
        self._notify()

    def _lose(self, reason: str) -> None:
        self._finish(EndReason("disconnected", None, f"lost the connection to {self.backend.url}: {reason}; the session may still run there"), lost=True)

    # -- events ------------------------------------------------------------------------
    def _handle(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            return
        env = json.loads(raw)
        type_, seq = env.get("type"), env.get("seq")
        if type_ in EVENT_TYPES and isinstance(seq, int) and not isinstance(seq, bool):
            self._ingest(event_from_envelope(env))
        elif type_ == "gap":
            self._apply_gap(_payload(env))
        elif type_ == "welcome":
            self._apply_welcome(_payload(env))
        elif type_ == "error":
            log.warning("loquilex server complained about session %s's socket: %s", self.id, _payload(env))

    def _ingest(self, ev: Event) -> None:
        if ev.seq <= self._last_seq:
            return  # a replay of what we already hold
        self._last_seq = ev.seq
        if ev.t1 is not None:
            self._heard = max(self._heard, ev.t1)
        data = ev.data or {}
        if ev.type == "status" and data.get("state") in STATES:
            self.state = data["state"]
            if data.get("end"):
                self.end = end_from_dict(data["end"])
        self.eventlog.append(ev)
        if ev.type == "eos":
            self._finish(end_from_dict(data.get("end") or {"kind": "clean", "exit_code": 0}), override=self._lost)

    def _apply_gap(self, gap: dict[str, Any]) -> None:
        to_seq = int(gap.get("to_seq") or 0)
        snap = gap.get("snapshot") or {}
        lacking = sorted((event_from_wire(d) for d in snap.get("finals") or ()), key=lambda e: e.seq)
        before = self._last_seq
        for ev in lacking:
            if self._last_seq < ev.seq <= to_seq:
                self._last_seq = ev.seq
                self.eventlog.append(ev)
        for ev in sorted((event_from_wire(d) for d in snap.get("revisions") or ()), key=lambda e: e.seq):
            if before < ev.seq <= to_seq:
                self.revisions.append(ev)  # revisions of recovered finals, not replayed into the log
        self._last_seq = max(self._last_seq, to_seq)
        partial = snap.get("partial")
        last_final = self.finals[-1].seq if self.finals else 0
        self.eventlog.partial = event_from_wire(partial) if partial and int(partial["seq"]) > last_final else None
        if snap.get("state") in STATES:
            self.state = snap["state"]
        log.warning("session %s: events %s..%s were no longer on the server; %d final(s) recovered", self.id, gap.get("from_seq"), to_seq, len(lacking))
        self._notify()

    def _apply_welcome(self, w: dict[str, Any]) -> None:
        self._token = w.get("resume_token") or self._token
        hb, hb_timeout = w.get("hb_interval"), w.get("hb_timeout")
        # our hb must arrive well within the server's hb_timeout, whatever its own cadence
        candidates = [x for x in (hb, hb_timeout / 3 if hb_timeout else None) if x]
        self._hb_interval = min(candidates) if candidates else None
        # the server sends hb every hb_interval; three missed ones mean a dead connection
        self._silence = 3 * hb + 5.0 if hb else None
        limits = w.get("limits") or {}
        self._max_bytes = max(2, int(limits.get("max_message_bytes") or self._max_bytes)) // 2 * 2
        rate = limits.get("max_messages_per_second")
        self._gap_s = 1.0 / (0.8 * rate) if rate else 0.0
        info = w.get("session") or {}
        self.pid = info.get("pid", self.pid)
        if info.get("out_dir"):
            self._info = {**self._info, "out_dir": info["out_dir"]}

    # -- the socket ----------------------------------------------------------------------
    async def open(self) -> None:
        """First connection (hello from seq 0), then the reader and heartbeat tasks."""
        await self._connect(CONNECT_TIMEOUT)
        self._reader = asyncio.create_task(self._read_loop(), name=f"loquilex-remote-reader-{self.id}")
        self._hb = asyncio.create_task(self._hb_loop(), name=f"loquilex-remote-hb-{self.id}")

    async def _connect(self, timeout: float) -> None:
        u = urlsplit(self.backend.url)
        ws_url = u._replace(scheme="wss" if u.scheme == "https" else "ws").geturl() + f"loquilex/api/sessions/{self.id}/events"
        req = HTTPRequest(ws_url, headers=self.backend.headers(), connect_timeout=timeout, request_timeout=timeout)
        fut = websocket_connect(req, max_message_size=MAX_INCOMING)
        try:
            # shielded: cancelling tornado's future mid-handshake would strand the socket
            conn = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(_close_if_connected)
            raise
        try:
            hello: dict[str, Any] = {"type": "hello", "last_seq": self._last_seq}
            if self._token:
                hello["resume_token"] = self._token
            await conn.write_message(json.dumps(hello))
            raw = await asyncio.wait_for(conn.read_message(), timeout)
            if raw is None:
                raise ConnectionError(f"the server closed the socket ({conn.close_code} {conn.close_reason or ''})".rstrip())
            env = json.loads(raw)
            if env.get("type") != "welcome":
                raise ConnectionError(f"expected welcome, got {raw[:200]!r}")
        except BaseException:
            _hard_close(conn)
            raise
        self._apply_welcome(_payload(env))
        self._acked = self._last_seq
        self._opened_at = asyncio.get_running_loop().time()
        self._conn = conn
        self._notify()

    async def _read_loop(self) -> None:
        while True:
            conn = self._conn
            code, reason = (None, "no connection") if conn is None else await self._pump(conn)
            _hard_close(conn)  # the server may have closed it; this releases tornado's side too
            if self._conn is conn:
                self._conn = None
                self._notify()
            if self._closing or self._done.is_set():
                return
            if code in FINAL_CLOSE:
                await self._give_up(f"socket closed {code} ({FINAL_CLOSE[code]}) {reason}".rstrip())
                return
            log.info("session %s: socket dropped (%s %s), reconnecting", self.id, code, reason)
            if asyncio.get_running_loop().time() - self._opened_at < 1.0:
                # dropped right after a welcome: do not hammer the server in a tight loop
                await self._wait_until(lambda: self._closing, 1.0)
            if not await self._reconnect(f"{code} {reason}"):
                return

    async def _pump(self, conn: WebSocketClientConnection) -> tuple[int | None, str]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                raw = await asyncio.wait_for(conn.read_message(), self._silence)
            except asyncio.TimeoutError:
                _hard_close(conn)
                return None, f"no message for {self._silence:.0f} s"
            if raw is None:
                return conn.close_code, conn.close_reason or ""
            try:
                self._handle(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("session %s: bad message from the server: %r", self.id, exc)
            if self._last_seq > self._acked and (self._last_seq - self._acked >= ACK_EVERY or loop.time() - self._ack_time >= ACK_PERIOD):
                await self._ack()

    async def _reconnect(self, reason: str) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_WINDOW
        delay = 0.1
        while not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                await self._connect(min(remaining, CONNECT_TIMEOUT))
            except Exception as exc:
                reason = repr(exc)
                if getattr(exc, "code", None) in (401, 403, 404):
                    break  # refused, not unreachable: retrying cannot help
            else:
                if self._closing:
                    _hard_close(self._conn)
                    return False
                return True
            await self._wait_until(lambda: self._closing, min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 2.0)
        if not self._closing:
            await self._give_up(reason)
        return False

    async def _give_up(self, reason: str) -> None:
        """Take the server's word for how it ended, if it still knows; else mark it lost."""
        try:
            info = await self.backend.request("GET", f"sessions/{self.id}", timeout=CONNECT_TIMEOUT)
        except Exception:
            info = None
        if isinstance(info, dict) and info.get("end"):
            self._finish(end_from_dict(info["end"]))
        else:
            self._lose(reason)

    async def _hb_loop(self) -> None:
        while not self._closing:
            await self._wait_until(lambda: self._closing, self._hb_interval or 10.0)
            if self._closing:
                return
            if self._conn is not None:
                await self._ack()
                await self._try_send({"type": "hb"})

    async def _ack(self) -> None:
        seq = self._last_seq
        if seq > self._acked and await self._try_send({"type": "ack", "seq": seq}):
            self._acked = seq
            self._ack_time = asyncio.get_running_loop().time()

    async def _try_send(self, msg: dict[str, Any]) -> bool:
        """Fire-and-forget for acks and hbs: the reader owns drops, so never wait for one."""
        conn = self._conn
        if conn is None:
            return False
        try:
            await self._pace()
            await conn.write_message(json.dumps(msg))
            return True
        except Exception:
            return False

    async def _pace(self) -> None:
        # stay under the server's max_messages_per_second; slots are reserved before sleeping
        loop = asyncio.get_running_loop()
        now = loop.time()
        slot = max(now, self._next_send)
        self._next_send = slot + self._gap_s
        if slot > now:
            await asyncio.sleep(slot - now)

    async def _send(self, payload: str | bytes, binary: bool = False) -> None:
        """Send in order, waiting through a reconnect; audio must not be dropped on a blip."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SEND_WAIT
        while True:
            if self._done.is_set() or self._closing:
                raise SessionEnded(f"session {self.id} has ended")
            conn = self._conn
            if conn is None:
                ok = await self._wait_until(lambda: self._conn is not None or self._done.is_set() or self._closing, deadline - loop.time())
                if not ok:
                    raise ConnectionError(f"no connection to the loquilex server at {self.backend.url} for {SEND_WAIT:.0f} s")
                continue
            await self._pace()
            try:
                await conn.write_message(payload, binary=binary)
                return
            except Exception:
                # the reader will see the drop and reconnect; wait for that, then resend
                if self._conn is conn:
                    self._conn = None
                    _hard_close(conn)
                    self._notify()

    # -- commands --------------------------------------------------------------------------
    async def feed(self, data: bytes, fmt: str) -> None:
        if fmt == "f32le":
            data = f32le_to_s16le(data)
        elif fmt != "s16le":
            raise ValueError(f"unknown PCM format {fmt!r}")
        step = self._max_bytes
        for i in range(0, len(data), step):
            await self._send(data[i:i + step], binary=True)

    async def finalize(self) -> None:
        await self._send(json.dumps({"type": "finalize"}))

    def feed_file(self, path: str, realtime: bool) -> None:
        """Stream a file this kernel reads (the server may not) as push audio, then stop."""
        self._feeder = asyncio.create_task(self._feed_file(path, realtime), name=f"loquilex-remote-file-{self.id}")

    async def _feed_file(self, path: str, realtime: bool) -> None:
        from ..core.audio import iter_file_chunks

        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0.0
        # realtime: 0.1 s frames at the speed of speech; else as fast as the server accepts
        # them (each send waits until tornado has flushed the frame to the socket)
        chunk_s = 0.1 if realtime else FILE_CHUNK
        chunks = iter_file_chunks(path, chunk_s)
        try:
            for chunk in chunks:  # each step decodes a few ms of audio on this loop
                await self.feed(np.asarray(chunk, dtype="<f4").tobytes(), "f32le")
                sent += len(chunk) / 16000
                if realtime:
                    await self._wait_until(lambda: self._closing, start + sent - loop.time())
                else:
                    await self._catch_up(sent - FEED_AHEAD)
                if self._closing or self._done.is_set():
                    return
            # like the end of a file on the server: everything fed is decoded, then eos. The
            # stop must find the worker caught up, or the server's stop grace could run out
            await self._send(json.dumps({"type": "finalize"}))
            await self._catch_up(sent - FEED_TAIL, quiet=FEED_END_QUIET)
            await self._send(json.dumps({"type": "stop"}))
        except SessionEnded:
            pass
        except Exception as exc:
            log.warning("session %s: streaming %s stopped: %r", self.id, path, exc)
            await self._try_send({"type": "stop"})  # what was fed still ends with finals and eos
        finally:
            chunks.close()

    async def wait(self, timeout: float | None = None) -> EndReason | None:
        return self.end if await self._wait_until(self._done.is_set, timeout) else None

    async def stop(self, grace: float | None = None) -> EndReason:
        """Stop via the socket, so the stop comes after every frame already fed.

        `grace` is ignored: the server's own grace and ladder apply. Concurrent callers share one stop.
        """
        if self._stopper is None:
            self._stopper = asyncio.create_task(self._stop_once(), name=f"loquilex-remote-stop-{self.id}")
        await asyncio.shield(self._stopper)
        assert self.end is not None
        return self.end

    async def _catch_up(self, position: float, quiet: float = FEED_QUIET) -> None:
        """Wait until the worker has reported audio up to `position` s, or went quiet (silence)."""
        while self._heard < position and not (self._closing or self._done.is_set()):
            heard = self._heard
            await self._wait_until(lambda: self._heard > heard or self._closing or self._done.is_set(), quiet)
            if self._heard == heard:
                return  # nothing new: a stretch of silence gives no events, feed on

    async def _stop_once(self) -> None:
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()
            await asyncio.gather(self._feeder, return_exceptions=True)
        if self._done.is_set() and not self._lost:
            return
        if not self._done.is_set():
            try:
                await self._send(json.dumps({"type": "stop"}))
                if await self._wait_until(self._done.is_set, STOP_WAIT):
                    return
            except (SessionEnded, ConnectionError):
                pass
            if self._done.is_set() and not self._lost:
                return
        # no socket (or no eos in time): the REST route runs the same ladder and reports the end
        try:
            info = await self.backend.request("DELETE", f"sessions/{self.id}")
        except Exception as exc:
            log.warning("session %s: DELETE on %s failed: %r", self.id, self.backend.url, exc)
            info = None
        if isinstance(info, dict) and info.get("end"):
            # let a live socket deliver the last finals and the eos before settling for the REST answer
            await self._wait_until(self._done.is_set, 2.0)
            if not self._done.is_set() or self._lost:
                self._finish(end_from_dict(info["end"]), override=True)
        if not self._done.is_set():
            self._lose("the server did not confirm the stop")

    async def close(self) -> None:
        """Stop if running, close the socket, end every task; idempotent, bounded, never raises."""
        if self._closer is None:
            self._closer = asyncio.create_task(self._close_once(), name=f"loquilex-remote-close-{self.id}")
        try:
            await asyncio.shield(self._closer)
        except Exception:
            pass

    async def _close_once(self) -> None:
        try:
            await asyncio.wait_for(self.stop(), CLOSE_STOP_TIMEOUT)
        except Exception as exc:
            log.warning("session %s: stop during close failed: %r", self.id, exc)
        self._closing = True
        self._notify()
        conn, self._conn = self._conn, None
        tasks = [t for t in (self._reader, self._hb, self._stopper, self._feeder) if t is not None]
        if conn is not None:
            proto = conn.protocol
            conn.close(1000, "client closed")  # the reader returns once the server answers
            if self._reader is not None:
                await asyncio.wait([self._reader], timeout=READER_EXIT)
            if proto is not None and proto.stream is not None and not proto.stream.closed():
                proto.stream.close()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=READER_EXIT)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _hard_close(conn: WebSocketClientConnection | None) -> None:
    """Close without waiting for the server's close frame (it may never come)."""
    if conn is None:
        return
    proto = conn.protocol
    conn.close()
    if proto is not None and proto.stream is not None:
        proto.stream.close()


def _close_if_connected(fut: asyncio.Future) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()


# -- choosing the backend --------------------------------------------------------------------
