"""Assert that a block of code leaves no threads, tasks, children or fds behind.

Usage::

    with leakcheck(settle=2.0):
        session.start(); session.stop()

Only what is new is judged, against a baseline taken at entry, so resources
that existed before the block (pytest's own capture files, a session-wide
server) are never blamed on it. "New" means by identity, never by count:
a thread ident, a native thread id, a child (pid, start time), an fd number
with its target (``socket:[inode]`` names one socket). Closing an old
resource therefore cannot hide a new one.

Native threads (a C library's, e.g. zmq's I/O threads) are read from
``/proc/self/task``. ``NATIVE_THREAD_ALLOWANCE`` lists the only ones
tolerated: pools a library keeps for the whole process by design.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import threading
import time
import traceback
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from ..core.resources import fd_targets, loop_tasks
from .subreaper import reap_adopted

__all__ = [
    "Baseline",
    "Leak",
    "LeakError",
    "leakcheck",
    "record_task_stacks",
    "take_baseline",
    "wait_for_settle",
]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05

# (prefix of /proc/self/task/<tid>/comm, why it may appear and stay). Keep it
# short: every entry is a place a leak could hide.
NATIVE_THREAD_ALLOWANCE: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Leak:
    kind: str  # "thread" | "native-thread" | "task" | "child" | "fd" | "socket"
    detail: str
    pid: int | None = None  # for "child": the process, so a caller can reap it

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


class LeakError(AssertionError):
    """Resources created inside a ``leakcheck`` block outlived it."""

    def __init__(self, leaks: Sequence[Leak], settle: float | None = None) -> None:
        self.leaks = tuple(leaks)
        self.settle = settle
        waited = "" if settle is None else f" {settle:g}s after the block ended"
        lines = [f"{len(self.leaks)} leaked resource(s) still present{waited}:"]
        lines += [f"  {leak}" for leak in self.leaks]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        # Custom __init__ args: keep it picklable for pytest-xdist and friends.
        return (type(self), (self.leaks, self.settle))


def _native_thread_ids() -> set[str] | None:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _comm(tid: str) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def _socket_address(fd: int) -> str:
    """"local -> peer" of a socket fd of ours, read through a duplicate."""
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            local = sock.getsockname()
            try:
                peer = sock.getpeername()
            except OSError:
                peer = None
    except OSError:
        return ""

    def fmt(addr: Any) -> str:
        if isinstance(addr, tuple):
            return ":".join(map(str, addr[:2]))
        return str(addr or "") or "-"

    return f"{fmt(local)} -> {fmt(peer)}"


def _thread_alive(t: threading.Thread, native: set[str] | None) -> bool:
    # A _DummyThread (a foreign thread that touched threading, e.g. a C
    # audio callback that logged) reports is_alive() forever on 3.11;
    # ask the kernel whether its native thread still exists.
    if isinstance(t, threading._DummyThread):  # type: ignore[attr-defined]
        return native is None or str(t.native_id) in native
    return t.is_alive()


def _children() -> dict[tuple[int, float], psutil.Process]:
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            # create_time guards against a recycled pid passing as old.
            found[(child.pid, child.create_time())] = child
        except psutil.NoSuchProcess:
            continue
    return found


def describe_child(child: psutil.Process) -> str | None:
    try:
        status = child.status()
    except psutil.NoSuchProcess:
        return None  # reaped meanwhile: not a leak
    try:
        cmd = " ".join(child.cmdline()) or child.name()
    except psutil.Error:
        cmd = "?"
    hint = " (exited, never waited for)" if status == psutil.STATUS_ZOMBIE else ""
    return f"pid={child.pid} status={status}{hint} cmdline={cmd!r}"


_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)

# Where each task was created, for loops under record_task_stacks().
_TASK_STACKS: weakref.WeakKeyDictionary[asyncio.Task[Any], str] = weakref.WeakKeyDictionary()


def _describe_task(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    coro_name = getattr(coro, "__qualname__", type(coro).__name__)
    text = repr(task)
    if len(text) > 200:
        text = text[:197] + "..."
    stack = _TASK_STACKS.get(task)
    created = f"\n    created at:\n{stack}" if stack else ""
    return f"name={task.get_name()!r} coro={coro_name} {text}{created}"


@contextmanager
def record_task_stacks(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """Remember where each task of ``loop`` is created, for leak reports."""
    previous = loop.get_task_factory()

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        # asyncio's own frames say nothing about who forgot the task.
        frames = [
            f for f in traceback.extract_stack(limit=24)[:-1]
            if not f.filename.startswith(_ASYNCIO_DIR)
        ]
        _TASK_STACKS[task] = "".join(
            "      " + line for line in traceback.format_list(frames[-5:])
        ).rstrip()
        return task

    loop.set_task_factory(factory)
    try:
        yield
    finally:
        if not loop.is_closed():
            loop.set_task_factory(previous)


@dataclass(frozen=True)
class Baseline:
    """What existed at entry. Weak sets so the baseline keeps nothing alive."""

    threads: weakref.WeakSet[threading.Thread]
    thread_names: dict[int, str]
    loop: asyncio.AbstractEventLoop | None
    tasks: weakref.WeakSet[asyncio.Task[Any]] | None
    children: frozenset[tuple[int, float]]
    fds: dict[int, str]
    native_threads: frozenset[str] | None = None
    allow_threads: tuple[str, ...] = ()
    taken_at: float = field(default_factory=time.monotonic)
    # Zombie children known to have an owner here (a Popen not yet waited
    # for): a leak, but no need to walk the heap for them on every poll.
    _owned_zombies: set[int] = field(default_factory=set, compare=False)

    def leaks(self) -> list[Leak]:
        """One look at what is new since the baseline; no waiting."""
        return (
            self._thread_leaks()
            + self._native_thread_leaks()
            + self._task_leaks()
            + self._child_leaks()
            + self._fd_leaks()
        )

    def _thread_leaks(self) -> list[Leak]:
        native = _native_thread_ids()
        out = []
        for t in threading.enumerate():
            if t in self.threads or t.name.startswith(self.allow_threads):
                continue
            if _thread_alive(t, native):
                out.append(
                    Leak("thread", f"name={t.name!r} ident={t.ident} daemon={t.daemon}")
                )
        return out

    def _native_thread_leaks(self) -> list[Leak]:
        now = _native_thread_ids()
        if now is None or self.native_threads is None:
            return []
        # Python threads were judged above, with their names and allowances.
        python = {str(t.native_id) for t in threading.enumerate() if t.native_id}
        out = []
        for tid in sorted(now - self.native_threads - python, key=int):
            comm = _comm(tid)
            if comm == "?":
                continue  # exited between listdir and read
            if any(comm.startswith(prefix) for prefix, _ in NATIVE_THREAD_ALLOWANCE):
                continue
            out.append(Leak("native-thread", f"tid={tid} comm={comm!r}"))
        return out

    def _task_leaks(self) -> list[Leak]:
        if self.loop is None or self.tasks is None:
            return []
        return [
            Leak("task", _describe_task(task))
            for task in loop_tasks(self.loop)
            if task not in self.tasks and not task.done()
        ]

    def _child_leaks(self) -> list[Leak]:
        new = {key: child for key, child in _children().items() if key not in self.children}
        self._reap_adopted_zombies(new)
        out = []
        for key, child in sorted(new.items()):
            detail = describe_child(child)
            if detail is not None:
                out.append(Leak("child", detail, key[0]))
        return out

    def _reap_adopted_zombies(self, new: dict[tuple[int, float], psutil.Process]) -> None:
        # As a subreaper we adopt orphans; one that has since exited is gone,
        # not leaked, but only we can collect it. Our own unwaited children
        # stay: they are the "never waited for" leak.
        zombies = set()
        for (pid, _), child in new.items():
            try:
                if child.ppid() == os.getpid() and child.status() == psutil.STATUS_ZOMBIE:
                    zombies.add(pid)
            except psutil.Error:
                continue
        zombies -= self._owned_zombies
        if zombies:
            reaped = set(reap_adopted(among=zombies))
            self._owned_zombies.update(zombies - reaped)

    def _fd_leaks(self) -> list[Leak]:
        now = fd_targets()
        fresh = {fd: t for fd, t in now.items() if self.fds.get(fd) != t}
        if not fresh:
            return []
        out = []
        for fd, target in sorted(fresh.items()):
            if target.startswith("socket:"):
                where = _socket_address(fd)
                out.append(Leak("socket", f"{fd} -> {target} {where}".rstrip()))
            else:
                out.append(Leak("fd", f"{fd} -> {target}"))
        return out


def take_baseline(
    *, loop: asyncio.AbstractEventLoop | None = None, allow_threads: Iterable[str] = ()
) -> Baseline:
    if loop is None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            pass
    threads = threading.enumerate()
    return Baseline(
        threads=weakref.WeakSet(threads),
        thread_names={t.ident or 0: t.name for t in threads},
        loop=loop,
        tasks=None if loop is None else weakref.WeakSet(loop_tasks(loop)),
        children=frozenset(_children()),
        fds=fd_targets(),
        native_threads=frozenset(native) if (native := _native_thread_ids()) is not None else None,
        allow_threads=tuple(allow_threads),
    )


def wait_for_settle(baseline: Baseline, settle: float) -> list[Leak]:
    """Poll until nothing has grown or ``settle`` seconds pass; return leftovers."""
    deadline = time.monotonic() + settle
    collected = False
    while True:
        leaks = baseline.leaks()
        if not leaks:
            return []
        if not collected:
            # Objects stuck in reference cycles (a loop held by a traceback,
            # say) close on the next collection; that is lag, not a leak.
            gc.collect()
            collected = True
            continue
        if time.monotonic() >= deadline:
            return leaks
        time.sleep(POLL_INTERVAL)


@contextmanager
def leakcheck(
    settle: float = 5.0,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    allow_threads: Iterable[str] = (),
) -> Iterator[Baseline]:
    """Raise LeakError if the block leaves threads, tasks, children or fds behind.

    ``loop`` defaults to the running loop, if any. The settle wait sleeps in
    the calling thread, so a loop running in *this* thread cannot finish its
    tasks meanwhile; pass a loop that runs in another thread for that.
    Threads whose name starts with a prefix in ``allow_threads`` are ignored.
    """
    baseline = take_baseline(loop=loop, allow_threads=allow_threads)
    try:
        yield baseline
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise  # the user wants out; do not make them wait for a report
    except BaseException as exc:
        # The block's own failure matters more: report leaks beside it.
        try:
            leaks = wait_for_settle(baseline, settle)
            report = str(LeakError(leaks, settle)) if leaks else ""
        except Exception as check_exc:  # never mask the original error
            report = f"leakcheck itself failed: {check_exc!r}"
        if report:
            log.warning("%s", report)
            if hasattr(exc, "add_note"):  # 3.11+
                exc.add_note(report)
        raise
    leaks = wait_for_settle(baseline, settle)
    if leaks:
        raise LeakError(leaks, settle)
