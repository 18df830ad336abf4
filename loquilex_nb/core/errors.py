"""Exceptions every side raises alike (embedded supervisor, server, kernel client)."""


class SessionEnded(RuntimeError):
    """The session's worker is gone; it cannot take more audio or commands."""


class SessionLimitError(RuntimeError):
    """Too many sessions are running; stop one first."""


class BadRequest(ValueError):
    """A client's request is invalid: the server answers HTTP 400 with this message."""


class Conflict(ValueError):
    """The request collides with existing state (a folder in use): HTTP 409."""
