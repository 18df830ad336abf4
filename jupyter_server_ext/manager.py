"""The server-side owner of the supervisor, the hub and the kernel hooks."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import psutil

from loquilex_nb.core.audio import AudioError, probe
from loquilex_nb.core.config import FORMATS, SessionConfig, build_asr_config, check_options, parse_formats
from loquilex_nb.core.paths import ensure_dir_under, open_beneath, relative_to_root, resolve_under
from loquilex_nb.core.resources import process_counters, worker_figures
from loquilex_nb.supervisor.session import Session
from loquilex_nb.supervisor.supervisor import Supervisor

from .hub import Hub, Limits

log = logging.getLogger("loquilex.server")

KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"
CLIENT_FORBIDDEN = ("model", "output_root", "owner")
SHUTDOWN_DRAIN = 2.0  # seconds the sockets get to deliver their sessions' last events
SHUTDOWN_SLACK = 1.0  # of stop_timeout, for closing sockets and tasks after the sessions


CAPTION_NAMES = ("captions.vtt", "captions.srt", "final.txt")


class BadRequest(ValueError):
    """A client error: becomes HTTP 400 with this message."""


class Conflict(ValueError):
    """The request collides with existing state (a folder in use): HTTP 409."""


class Request(NamedTuple):
    sid: str
    config: SessionConfig
    path: str | None  # a file source, relative to root_dir, opened at admission
    overwrite: bool


async def _in_own_thread(fn, *args, discard=None):
    """Run a short blocking call in a thread of its own, joined before returning (the default
    executor would keep an idle thread in the server for good). If we are cancelled meanwhile,
    `discard` gets the result nobody will use (e.g. closes an fd)."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def target() -> None:
        try:
            result = fn(*args)
        except BaseException as exc:
            loop.call_soon_threadsafe(lambda e=exc: done.done() or done.set_exception(e))
        else:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(result))

    thread = threading.Thread(target=target, name="loquilex-probe")
    thread.start()
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        await asyncio.wait([done])
        if discard is not None and done.exception() is None:
            discard(done.result())
        raise
    finally:
        while thread.is_alive():  # it has set the future: only its last steps are left
            await asyncio.sleep(0.001)
        thread.join()


def _mkdirs(target: Path, made: list[Path]) -> None:
    """Create target's missing folders, recording each one made (so a failed start can undo it)."""
    missing = []
    p = target
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        made.append(d)


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
        self.sweeps = 0
        self._tasks: set[asyncio.Task] = set()
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        if self.event_logger is not None:
            self.event_logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_kernel_action)
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="loquilex-sweeper")

    async def shutdown(self, timeout: float | None = None) -> None:
        """Close every socket, stop every session, stop our tasks; idempotent.

        ``timeout`` bounds the whole; the sessions are stopped in parallel under one deadline
        that leaves room for the sockets' drain."""
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
        budget = None if timeout is None else max(1.0, timeout - SHUTDOWN_DRAIN - SHUTDOWN_SLACK)
        await self.supervisor.shutdown(budget)
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
    def validate(self, body: Any) -> "Request":
        """Every check that needs no process and no folder; raises BadRequest (400)."""
        if not isinstance(body, Mapping):
            raise BadRequest("the request body must be a JSON object")
        body = dict(body)
        bad = [k for k in CLIENT_FORBIDDEN if k in body]
        if bad:
            raise BadRequest(f"option(s) {', '.join(map(repr, bad))} are set by the server, not by clients")
        source = body.pop("source", None)
        kernel_id = body.pop("kernel_id", None)
        overwrite = body.pop("overwrite", False)
        if not isinstance(overwrite, bool):
            raise BadRequest(f"overwrite must be true or false, got {str(overwrite)[:40]!r}")
        try:
            check_options(body, server=True)
        except ValueError as exc:
            raise BadRequest(f"{exc}; and source, kernel_id, overwrite") from None
        if kernel_id is not None:
            if not isinstance(kernel_id, str) or not self._kernel_exists(kernel_id):
                raise BadRequest(f"kernel_id {str(kernel_id)[:80]!r} is not a running kernel of this server")
        if not isinstance(source, Mapping):
            raise BadRequest('source must be an object: {"kind": "file", "path": ...} or {"kind": "push"}')
        extra = set(source) - {"kind", "path", "realtime"}
        if extra:
            raise BadRequest(f"unknown source key(s) {sorted(map(str, extra))[:10]}")
        kind = source.get("kind")
        if kind not in ("file", "push"):
            raise BadRequest(f"source kind must be 'file' or 'push', got {str(kind)[:40]!r}")
        # `realtime` may sit in the source (the protocol) or at the top (lx.session's keyword)
        realtime = body.pop("realtime", source.get("realtime", True))
        if "realtime" in source and source["realtime"] != realtime:
            raise BadRequest("realtime is given twice, with different values")
        if not isinstance(realtime, bool):
            raise BadRequest(f"realtime must be true or false, got {str(realtime)[:40]!r}")
        sid = uuid.uuid4().hex[:12]
        out = body.pop("out", None)
        if out is not None and not isinstance(out, str):
            raise BadRequest(f"out must be a folder name, got {type(out).__name__}")
        out = relative_to_root(self.output_root, out) if out is not None else sid
        formats = body.pop("formats", FORMATS)
        final_lines = body.pop("final_lines", 50)
        if self.model:
            body["model"] = self.model
        path = None
        try:
            if kind == "file":
                path = source.get("path")
                if not isinstance(path, str) or not path:
                    raise ValueError("a file source needs a non-empty string path relative to the server root")
                path = relative_to_root(self.root_dir, path)
                src = {"kind": "file", "path": str(resolve_under(self.root_dir, path)), "realtime": realtime}
            else:
                src = {"kind": "push"}
            out_dir = resolve_under(self.output_root, out)
            config = SessionConfig(
                source=src, out_dir=str(out_dir), asr=build_asr_config(body),
                formats=parse_formats(formats), final_lines=final_lines, owner=kernel_id,
            )
        except (ValueError, TypeError, OSError) as exc:
            raise BadRequest(self._hide_roots(str(exc))) from None
        return Request(sid, config, path, overwrite)

    def _hide_roots(self, text: str) -> str:
        return text.replace(self.root_dir.as_posix() + "/", "").replace(self.output_root.as_posix() + "/", "")

    def _open_source(self, path: str) -> int:
        """Open once, confined to root_dir, and probe it (in a thread: FFmpeg may take a moment).
        The worker reads this very open file: a symlink swapped in later changes nothing."""
        fd = open_beneath(self.root_dir, path)
        try:
            probe(fd, path)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _admit_folder(self, config: SessionConfig, overwrite: bool) -> None:
        """Sessions never share a folder; earlier captions are kept unless overwrite is asked."""
        out = Path(config.out_dir)
        for s in self.supervisor.list():
            if Path(s.config.out_dir) == out:
                raise Conflict(f"folder {self._hide_roots(str(out))!r} is in use by session {s.id}")
        if out.exists() and not out.is_dir():
            raise BadRequest(f"out {self._hide_roots(str(out))!r} is a file, not a folder")
        held = [n for n in CAPTION_NAMES if (out / n).exists()]
        if held and not overwrite:
            raise Conflict(
                f"folder {self._hide_roots(str(out))!r} already holds captions ({', '.join(held)}); "
                'choose another "out" or send "overwrite": true'
            )

    async def create(self, body: Any) -> Session:
        if self._closed:
            raise RuntimeError("the server is shutting down")
        req = self.validate(body)
        fd = None
        if req.path is not None:
            try:
                fd = await _in_own_thread(self._open_source, req.path, discard=os.close)
            except (ValueError, AudioError, OSError) as exc:
                raise BadRequest(self._hide_roots(str(exc))) from None
        made: list[Path] = []
        try:
            # admit, then create the folder, then start: no await between the checks and
            # the supervisor's own, so concurrent POSTs cannot both pass
            if self._closed:
                raise RuntimeError("the server is shutting down")
            self.supervisor.admit()
            self._admit_folder(req.config, req.overwrite)
            config = dataclasses.replace(req.config, source_fd=fd)
            try:
                _mkdirs(Path(config.out_dir), made)
                ensure_dir_under(self.output_root, os.path.relpath(config.out_dir, self.output_root.resolve()))
            except (ValueError, OSError) as exc:
                raise BadRequest(self._hide_roots(str(exc))) from None
            session = await self.supervisor.create(config, sid=req.sid)
            made.clear()
        finally:
            if fd is not None:
                os.close(fd)  # the worker has its own copy now (or never will)
            for d in reversed(made):
                try:
                    d.rmdir()  # a refused or failed start leaves no folder behind
                except OSError:
                    pass
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
            # WebSockets open to it (hello or not): what a watching client costs the server
            conns = len(self.hub.sockets.get(s.id, ()))
            sessions.append({"sid": s.id, "state": s.state, "owner": s.owner, "connections": conns, **figures})
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
            self.sweeps += 1  # lets a test wait for "N sweeps passed" instead of guessing a time


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
