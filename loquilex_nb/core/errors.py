"""Exceptions every side raises alike (embedded supervisor, server, kernel client)."""


class SessionEnded(RuntimeError):
    """The session's worker is gone; it cannot take more audio or commands."""


class SessionLimitError(RuntimeError):
    """Too many sessions are running; stop one first."""
