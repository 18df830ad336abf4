"""Resource counters for this process and its workers, via psutil and /proc."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import psutil

__all__ = [
    "ProcessCounters",
    "WorkerFigures",
    "fd_targets",
    "loop_tasks",
    "process_counters",
    "socket_count",
    "worker_figures",
]


@dataclass(frozen=True)
class ProcessCounters:
    pid: int
    threads: int
    thread_names: tuple[str, ...]
    tasks: int | None
    children: tuple[int, ...]
    fds: int
    sockets: int
    rss: int

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # JSON has no tuples; lists round-trip cleanly.
        d["thread_names"] = list(self.thread_names)
        d["children"] = list(self.children)
        return d


@dataclass(frozen=True)
class WorkerFigures:
    pid: int
    alive: bool
    cpu_user: float
    cpu_system: float
    cpu_percent: float | None
    rss: int
    fds: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def loop_tasks(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    """Pending tasks of ``loop``; callable from a thread other than the loop's.

    all_tasks() iterates a WeakSet the loop thread may mutate concurrently,
    which surfaces as RuntimeError("Set changed size during iteration").
    The snapshot is only approximate anyway, so retrying is enough.
    """
    for _ in range(9):
        try:
            return asyncio.all_tasks(loop)
        except RuntimeError:
            continue
    return asyncio.all_tasks(loop)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def fd_targets(pid: int | None = None) -> dict[int, str]:
    """Map fd -> readlink target (e.g. a path, ``socket:[123]``, ``pipe:[4]``)."""
    pid = os.getpid() if pid is None else pid
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        # No /proc (macOS) or not ours to read: psutil only knows regular files.
        return {f.fd: f.path for f in psutil.Process(pid).open_files()}
    targets: dict[int, str] = {}
    for name in names:
        try:
            targets[int(name)] = os.readlink(f"{base}/{name}")
        except (OSError, ValueError):
            # Closed between listdir and readlink -- including listdir's own fd.
            continue
    return targets


def socket_count(pid: int | None = None) -> int:
    """Open sockets (inet and unix) of ``pid``, counted from its fd table."""
    pid = os.getpid() if pid is None else pid
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return len(psutil.Process(pid).net_connections(kind="all"))
    count = 0
    for name in names:
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def process_counters(
    loop: asyncio.AbstractEventLoop | None = None, pid: int | None = None
) -> ProcessCounters:
    """Snapshot of threads, tasks, children, fds, sockets and RSS of ``pid``.

    Thread names and task counts are only knowable from inside the process,
    so for a foreign pid they come back empty / None.
    """
    own = pid is None or pid == os.getpid()
    proc = psutil.Process(None if own else pid)
    with proc.oneshot():
        threads = proc.num_threads()
        fds = proc.num_fds()
        rss = proc.memory_info().rss
        children = tuple(sorted(c.pid for c in proc.children(recursive=True)))
    tasks: int | None = None
    names: tuple[str, ...] = ()
    if own:
        names = tuple(t.name for t in threading.enumerate())
        loop = loop if loop is not None else _running_loop()
        if loop is not None:
            tasks = len(loop_tasks(loop))
    return ProcessCounters(
        pid=proc.pid,
        threads=threads,
        thread_names=names,
        tasks=tasks,
        children=children,
        fds=fds,
        sockets=socket_count(proc.pid),
        rss=rss,
    )


# psutil's cpu_percent() measures since the previous call on the *same*
# Process object, so keep one per worker. Bounded so workers that are never
# asked about again cannot grow it forever.
_CPU_SAMPLERS: OrderedDict[tuple[int, float], psutil.Process] = OrderedDict()
_CPU_SAMPLERS_MAX = 64
_CPU_SAMPLERS_LOCK = threading.Lock()


def _cpu_percent(proc: psutil.Process) -> float | None:
    # Keyed with create_time so a recycled pid never inherits a stale sample.
    key = (proc.pid, proc.create_time())
    with _CPU_SAMPLERS_LOCK:
        sampler = _CPU_SAMPLERS.pop(key, None)
        first = sampler is None
        if sampler is None:
            sampler = proc
        _CPU_SAMPLERS[key] = sampler
        while len(_CPU_SAMPLERS) > _CPU_SAMPLERS_MAX:
            _CPU_SAMPLERS.popitem(last=False)
    value = sampler.cpu_percent(interval=None)
    # The first reading has no previous sample to compare to: 0.0 would lie.
    return None if first else value


def _forget(pid: int) -> None:
    with _CPU_SAMPLERS_LOCK:
        for key in [k for k in _CPU_SAMPLERS if k[0] == pid]:
            del _CPU_SAMPLERS[key]


def worker_figures(pid: int) -> WorkerFigures:
    """CPU/RSS/fd figures of a worker process; ``alive=False`` once it is gone.

    A zombie counts as gone: it runs nothing and holds nothing but its pid.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                raise psutil.ZombieProcess(pid)
            times = proc.cpu_times()
            rss = proc.memory_info().rss
            fds = proc.num_fds()
            percent = _cpu_percent(proc)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        # ZombieProcess subclasses NoSuchProcess; named for the reader.
        _forget(pid)
        return WorkerFigures(pid, False, 0.0, 0.0, None, 0, 0)
    return WorkerFigures(
        pid=pid,
        alive=True,
        cpu_user=times.user,
        cpu_system=times.system,
        cpu_percent=percent,
        rss=rss,
        fds=fds,
    )
