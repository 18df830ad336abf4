"""Who runs `lx.session(...)`: this process's own supervisor (embedded) or a Jupyter server.

A kernel started by a server with the extension uses that server (detected once); `lx.connect`
chooses explicitly; everything else is embedded.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

from .core.config import SessionConfig, build_config
from .core.events import EndReason, Event
from .remote import discovery
from .remote.client import RemoteBackend
from .supervisor.runtime import RUNTIME


class SessionCore(Protocol):
    """A running session as the handle sees it, on the private loop: the supervisor's
    `Session` (embedded) or a `RemoteSessionCore` (server mode)."""

    id: str
    state: str
    pid: int | None
    end: EndReason | None

    @property
    def alive(self) -> bool: ...
    @property
    def seq(self) -> int: ...
    @property
    def finals(self) -> list[Event]: ...
    @property
    def revisions(self) -> list[Event]: ...
    @property
    def partial(self) -> Event | None: ...

    async def next_events(self, seq: int, timeout: float | None = None) -> tuple[list[Event], bool]: ...
    async def feed(self, data: bytes, fmt: str) -> None: ...
    async def finalize(self) -> None: ...
    async def stop(self, grace: float | None = None) -> EndReason: ...
    async def wait(self, timeout: float | None = None) -> EndReason | None: ...
    async def close(self) -> None: ...


class Backend(Protocol):
    """What the handle needs from whoever runs its session."""

    name: str

    def prepare(self, source: Any, sid: str, options: dict[str, Any]) -> Any:
        """Validate everything; raise ValueError before any process starts."""

    async def create(self, prepared: Any, sid: str) -> SessionCore:
        """Start the session; return its core."""


class EmbeddedBackend:
    """Sessions run by this process's own supervisor (on the private loop thread)."""

    name = "embedded"

    def prepare(self, source: Any, sid: str, options: dict[str, Any]) -> SessionConfig:
        return build_config(source, sid=sid, **options)

    async def create(self, prepared: SessionConfig, sid: str) -> SessionCore:
        sup = RUNTIME.supervisor
        assert sup is not None
        return await sup.create(prepared, sid=sid)


EMBEDDED = EmbeddedBackend()


def default_backend():
    """The server this kernel belongs to, if it runs the extension (or `lx.connect`ed), else embedded."""
    return current_backend() or EMBEDDED


_AUTO = object()
_lock = threading.Lock()
_choice: Any = _AUTO  # set by connect(): a RemoteBackend, or None for embedded
_detected: Any = _AUTO


def _backend_for(url: str, token: str | None, root_dir: Any) -> RemoteBackend:
    info = discovery.server_for_url(url) or {}
    parent = discovery.parent_server_pid()
    # a kernel id only means something to the server that runs that kernel
    kid = discovery.kernel_id() if info and info.get("pid") == parent else None
    return RemoteBackend(url, token or info.get("token"), kernel_id=kid, root_dir=root_dir or info.get("root_dir"))


def connect(url: str | None, token: str | None = None, *, root_dir: str | os.PathLike | None = None, check: bool = True) -> RemoteBackend | None:
    """Make the Jupyter server at `url` run this process's `lx.session(...)`s; None: embedded.

    A local server's token and root_dir are read from its runtime file when not given.
    With `check`, the extension must answer first (a blocking request of at most 2 s).
    """
    global _choice
    if url is None:
        with _lock:
            _choice = None
        return None
    backend = _backend_for(url, token, root_dir)
    if check and not discovery.has_extension(backend.url, backend.token):
        raise ConnectionError(f"no loquilex server extension answers at {backend.url}")
    with _lock:
        _choice = backend
    return backend


def current_backend() -> RemoteBackend | None:
    """The `connect`ed server, else (detected once) the server running this kernel, else None."""
    global _detected
    with _lock:
        if _choice is not _AUTO:
            return _choice
        if discovery.mode_forced_embedded():
            return None
        if _detected is _AUTO:
            _detected = _detect()
        return _detected


def _detect() -> RemoteBackend | None:
    kid = discovery.kernel_id()
    if kid is None:
        return None  # a script started from a notebook has no kernel to own its sessions
    info = discovery.find_server()
    if info is None:
        return None
    return RemoteBackend(info["url"], info.get("token"), kernel_id=kid, root_dir=info.get("root_dir"))


def _reset() -> None:
    """Back to auto-detection, forgetting the cached result (tests)."""
    global _choice, _detected
    with _lock:
        _choice = _detected = _AUTO
