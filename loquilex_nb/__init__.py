"""loquilex-nb: live captioning sessions for Jupyter that leave nothing behind."""

from .api import AsyncSession, MicSource, PushSource, Session, resources, session, sessions, stop_all
from .events import EndReason, Event
from .leakcheck import LeakError, leakcheck
from .supervisor import SessionLimitError, Supervisor

__version__ = "0.1.0"

__all__ = [
    "AsyncSession", "EndReason", "Event", "LeakError", "MicSource", "PushSource", "Session",
    "SessionLimitError", "Supervisor", "leakcheck", "resources", "session", "sessions", "stop_all",
]
