"""The server-side owner of the supervisor, the hub and the kernel hooks."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import psutil

from loquilex_nb.api import PushSource, build_config
from loquilex_nb.config import SessionConfig
from loquilex_nb.paths import resolve_under
from loquilex_nb.resources import process_counters, worker_figures
from loquilex_nb.session import Session
from loquilex_nb.supervisor import Supervisor

from .hub import Hub, Limits

log = logging.getLogger("loquilex.server")

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CLIENT_FORBIDDEN = ("model", "output_root", "owner")
SHUTDOWN_DRAIN = 2.0  # seconds the sockets get to deliver their sessions' last events


class BadRequest(ValueError):
    """A client error: becomes HTTP 400 with this message."""


class SessionManager:
    def __init__(
        self,
        *,
        root_dir: str,
        output_root: str,
        model: str | None,
        supervisor: Supervisor,
        limits: Limits,
        kernel_manager: Any = None,
        event_logger: Any = None,
        sweep_interval: float = 2.0,
        stop_on_kernel_restart: bool = True,
    ) -> None:
        self.root_dir = Path(root_dir).resolve()
        self.output_root = Path(output_root)
        self.model = model
        self.supervisor = supervisor
        self.hub = Hub(limits)
        self.kernel_manager = kernel_manager
        self.event_logger = event_logger
        self.sweep_interval = sweep_interval
        self.stop_on_kernel_restart = stop_on_kernel_restart
        self._owner_pids: dict[str, int | None] = {}
        self._sweeper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self.event_logger is not None:
            self.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="loquilex-sweeper")

    async def shutdown(self) -> None:
        """Close every socket, stop every session, stop our tasks; idempotent."""
        self._closed = True
        if self.event_logger is not None:
            try:
                self.event_logger.remove_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
            except Exception:
                pass
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        # sessions first: the finals their stop produces still reach the clients, whose
        # sockets then close with 1000 after eos; whatever is left is closed with 1001
        await self.supervisor.shutdown()
        await self.hub.drain(SHUTDOWN_DRAIN)
        await self.hub.shutdown()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def spawn(self, coro, name: str) -> None:
        """A task owned by the manager (awaited at shutdown), e.g. a stop asked over a socket."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sessions -------------------------------------------------------------------------
    def prepare(self, body: Any) -> tuple[str, SessionConfig]:
        if not isinstance(body, Mapping):
            raise BadRequest("the request body must be a JSON object")
        body = dict(body)
        bad = [k for k in CLIENT_FORBIDDEN if k in body]
        if bad:
            raise BadRequest(f"option(s) {', '.join(map(repr, bad))} are set by the server, not by clients")
        source = body.pop("source", None)
        kernel_id = body.pop("kernel_id", None)
        if kernel_id is not None:
            if not isinstance(kernel_id, str) or not self._kernel_exists(kernel_id):
                raise BadRequest(f"kernel_id {kernel_id!r} is not a running kernel of this server")
        realtime = True
        if not isinstance(source, Mapping):
            raise BadRequest('source must be an object: {"kind": "file", "path": ...} or {"kind": "push"}')
        kind = source.get("kind")
        extra = set(source) - {"kind", "path", "realtime"}
        if extra:
            raise BadRequest(f"unknown source key(s) {sorted(extra)}")
        if kind == "file":
            path = source.get("path")
            if not isinstance(path, str) or not path:
                raise BadRequest("a file source needs a non-empty string path relative to the server root")
            try:
                src: Any = str(resolve_under(self.root_dir, path))
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            realtime = source.get("realtime", True)
        elif kind == "push":
            src = PushSource()
        else:
            raise BadRequest(f"source kind must be 'file' or 'push', got {kind!r}")
        import uuid

        sid = uuid.uuid4().hex[:12]
        if self.model:
            body["model"] = self.model
        try:
            config = build_config(src, sid=sid, realtime=realtime, output_root=self.output_root, owner=kernel_id, **body)
        except (ValueError, TypeError, OSError) as exc:
            # OSError: a name too long, or an `out` that is (or is under) an existing file
            raise BadRequest(str(exc).replace(self.root_dir.as_posix() + "/", "").replace(self.output_root.as_posix() + "/", "")) from None
        return sid, config

    async def create(self, body: Any) -> Session:
        if self._closed:
            raise RuntimeError("the server is shutting down")
        sid, config = self.prepare(body)
        session = await self.supervisor.create(config, sid=sid)
        if config.owner:
            self._owner_pids[config.owner] = self._kernel_pid(config.owner)
        return session

    def get(self, sid: str) -> Session | None:
        try:
            return self.supervisor.get(sid)
        except KeyError:
            return None

    def resources(self) -> dict[str, Any]:
        sessions = []
        by_kernel: dict[str, int] = {}
        for s in self.supervisor.list():
            figures = worker_figures(s.pid).as_dict() if s.pid else {}
            sessions.append({"sid": s.id, "state": s.state, "owner": s.owner, **figures})
            if s.owner:
                by_kernel[s.owner] = by_kernel.get(s.owner, 0) + 1
        return {
            "server": process_counters(loop=asyncio.get_running_loop()).as_dict(),
            "sessions": sessions,
            "by_kernel": by_kernel,
            "channels": len(self.hub.channels),
        }

    # -- kernels --------------------------------------------------------------------------
    def _kernel_exists(self, kernel_id: str) -> bool:
        km = self.kernel_manager
        return km is not None and kernel_id in km

    def _kernel_pid(self, kernel_id: str) -> int | None:
        try:
            kernel = self.kernel_manager.get_kernel(kernel_id)
            provisioner = getattr(kernel, "provisioner", None)
            return getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None), "pid", None)
        except Exception:
            return None

    async def _on_kernel_action(self, logger: Any, schema_id: str, data: Mapping[str, Any]) -> None:
        if data.get("action") in ("restart", "shutdown") and data.get("kernel_id"):
            kid = data["kernel_id"]
            stopped = await self.supervisor.stop_owned(kid)
            self._owner_pids.pop(kid, None)
            if stopped:
                log.info("kernel %s %s: stopped its loquilex sessions %s", kid, data["action"], stopped)

    def _orphaned_owners(self) -> set[str]:
        """Kernels that are gone, or whose process died (jupyter restarts it under the same id)."""
        dead = set()
        for s in self.supervisor.list():
            kid = s.owner
            if not kid:
                continue
            if not self._kernel_exists(kid):
                dead.add(kid)
                continue
            pid = self._owner_pids.get(kid)
            now_pid = self._kernel_pid(kid)
            if pid is None or (now_pid == pid and _alive(pid)):
                continue
            if not self.stop_on_kernel_restart and now_pid is not None and _alive(now_pid):
                self._owner_pids[kid] = now_pid  # restarted, and the user keeps sessions across restarts
                continue
            dead.add(kid)
        return dead

    async def sweep_once(self) -> None:
        for kid in self._orphaned_owners():
            stopped = await self.supervisor.stop_owned(kid)
            self._owner_pids.pop(kid, None)
            log.info("kernel %s is gone: stopped its loquilex sessions %s", kid, stopped)
        for sid in self.hub.sweep(time.monotonic()):
            self.supervisor.forget(sid)
        live = {s.id for s in self.supervisor.list()}
        for s in self.supervisor.list(include_ended=True):
            if s.id not in live and s.id not in self.hub.channels and s.ended_at is not None:
                if time.monotonic() - s.ended_at >= self.hub.limits.replay_window:
                    self.supervisor.forget(s.id)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep_once()
            except Exception:
                log.exception("loquilex sweep failed")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
