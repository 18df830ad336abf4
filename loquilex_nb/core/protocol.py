"""The REST/WebSocket protocol's shared words (docs/PROTOCOL.md): close codes and error statuses.

The server sends them and the kernel-side client reads them; keeping both sides on one table
is what stops a code from being documented, or handled, but never sent.
"""

from __future__ import annotations

from .errors import BadRequest, Conflict, SessionEnded, SessionLimitError

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
