"""loquilex-nb: live captioning sessions for Jupyter that leave nothing behind."""

from .handle import EMBEDDED, AsyncSession, MicSource, PushSource, Session, resources, session, sessions, stop_all
from .core.events import EndReason, Event
from .testing.leakcheck import LeakError, leakcheck
from .core.errors import SessionLimitError
from .supervisor.supervisor import Supervisor

__version__ = "0.1.0"


def connect(url, token=None, **kwargs):
    """Send `lx.session(...)` to the Jupyter server at `url` (None: back to embedded mode)."""
    from .backends import connect as _connect

    return _connect(url, token, **kwargs)


def configure(**settings):
    """Settings of embedded mode; returns them all. `max_sessions`: sessions this process may
    run at once (default 4, or $LOQUILEX_MAX_SESSIONS; None: back to that), a whole number >= 1."""
    from .supervisor.runtime import RUNTIME

    return RUNTIME.configure(**settings)


def load_ipython_extension(ipython):
    """`%load_ext loquilex_nb`: the `%lx` line magic (sessions, stop, resources, monitor)."""
    from .ui.magics import load_ipython_extension as _load

    _load(ipython)


def unload_ipython_extension(ipython):
    from .ui.magics import unload_ipython_extension as _unload

    _unload(ipython)


def __getattr__(name):
    # the widgets need ipywidgets (the `lab` extra): imported on first use only
    if name in ("ResourceMonitor", "CaptionView", "widgets"):
        from .ui import widgets

        # `from loquilex_nb import widgets` (the module's place before the layers) still works
        return widgets if name == "widgets" else getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EMBEDDED", "AsyncSession", "EndReason", "configure", "connect", "Event", "LeakError", "MicSource", "PushSource", "Session",
    "SessionLimitError", "Supervisor", "leakcheck", "load_ipython_extension", "resources", "session", "sessions", "stop_all",
]
