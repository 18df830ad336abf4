"""loquilex-nb: live captioning sessions for Jupyter that leave nothing behind."""

from .api import EMBEDDED, AsyncSession, MicSource, PushSource, Session, resources, session, sessions, stop_all
from .events import EndReason, Event
from .leakcheck import LeakError, leakcheck
from .supervisor import SessionLimitError, Supervisor

__version__ = "0.1.0"


def connect(url, token=None, **kwargs):
    """Send `lx.session(...)` to the Jupyter server at `url` (None: back to embedded mode)."""
    from .client import connect as _connect

    return _connect(url, token, **kwargs)



__all__ = [
    "EMBEDDED", "AsyncSession", "EndReason", "connect", "Event", "LeakError", "MicSource", "PushSource", "Session",
    "SessionLimitError", "Supervisor", "leakcheck", "resources", "session", "sessions", "stop_all",
]
