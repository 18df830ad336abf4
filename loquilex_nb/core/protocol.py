"""The REST/WebSocket protocol's shared words (docs/PROTOCOL.md): envelopes, close codes, error statuses.

The server sends them and the kernel-side client reads them; keeping both sides on one table
is what stops a code from being documented, or handled, but never sent.
"""

from __future__ import annotations

import time
from typing import Any

from .errors import BadRequest, Conflict, SessionEnded, SessionLimitError
from .events import Event

# -- envelopes: every text frame is {"v": 1, type, sid, seq, t_wall, t_mono, data} --------------
FIELDS = ("segment_id", "text", "t0", "t1", "words")  # a domain event's fields, inside `data`


def envelope(type_: str, sid: str, seq: int | None, data: dict[str, Any] | None) -> dict[str, Any]:
    """A protocol message (welcome, hb, gap, a connection's error): seq is None."""
    return {"v": 1, "type": type_, "sid": sid, "seq": seq, "t_wall": time.time(), "t_mono": time.monotonic(), "data": data or {}}


def event_envelope(ev: Event) -> dict[str, Any]:
    body = ev.as_dict()
    data = {k: body[k] for k in (*FIELDS, "data") if k in body}
    return {"v": 1, "type": ev.type, "sid": ev.sid, "seq": ev.seq, "t_wall": ev.t_wall, "t_mono": ev.t_mono, "data": data}


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


# -- WebSocket close codes ----------------------------------------------------------------------
CLOSE_ENDED = 1000
CLOSE_SHUTDOWN = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_TRY_LATER = 1013
CLOSE_UNKNOWN_SESSION = 4004
CLOSE_SLOW = 4008
CLOSE_HB_TIMEOUT = 4009
CLOSE_REPLACED = 4010

CLOSE_REASONS = {
    CLOSE_ENDED: "session ended",
    CLOSE_SHUTDOWN: "server shutting down",
    CLOSE_POLICY: "policy violation",
    CLOSE_TOO_BIG: "message too big",
    CLOSE_TRY_LATER: "too many connections",
    CLOSE_UNKNOWN_SESSION: "unknown session",
    CLOSE_SLOW: "client too slow",
    CLOSE_HB_TIMEOUT: "heartbeat timeout",
    CLOSE_REPLACED: "replaced by a newer connection",
}
# after these a reconnect meets the same answer: the client stops resuming
FINAL_CLOSE = frozenset({CLOSE_ENDED, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_UNKNOWN_SESSION})

# -- errors <-> HTTP status ---------------------------------------------------------------------
# (exception, status, wire code): the server answers the first row the exception is an instance
# of (subclasses first: SessionEnded and SessionLimitError are RuntimeErrors)
HTTP_ERRORS: tuple[tuple[type[BaseException], int, str], ...] = (
    (BadRequest, 400, "bad-request"),
    (Conflict, 409, "conflict"),
    (SessionEnded, 409, "session-ended"),
    (SessionLimitError, 429, "too-many-sessions"),
    (RuntimeError, 503, "unavailable"),
)
# answers the handlers give before any exception exists
BAD_JSON = (400, "bad-json")
TOO_BIG = (413, "too-big")


def http_error(exc: BaseException) -> tuple[int, str] | None:
    """(status, wire code) of an exception a request handler expects; None for a bug (500)."""
    for kind, status, code in HTTP_ERRORS:
        if isinstance(exc, kind):
            return status, code
    return None


def error_for_status(status: int, message: str, what: str) -> Exception:
    """The exception a client raises for an HTTP error answer to `what` ("POST sessions")."""
    if status == 429:
        return SessionLimitError(message)
    if status in (401, 403):
        return PermissionError(f"the loquilex server refused {what} ({status}): {message}")
    if status < 500:
        return ValueError(message)  # the caller's input: as embedded mode's validation raises
    return RuntimeError(f"the loquilex server failed on {what} ({status}): {message}")
