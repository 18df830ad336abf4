"""Assert that a block of code leaves no threads, tasks, children or fds behind.

Usage::

    with leakcheck(settle=2.0):
        session.start(); session.stop()

Only growth is judged, against a baseline taken at entry, so resources that
existed before the block (pytest's own capture files, a session-wide server)
are never blamed on it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import threading
import time
import weakref
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psutil

from .resources import fd_targets, loop_tasks, socket_count

__all__ = [
    "Baseline",
    "Leak",
    "LeakError",
    "leakcheck",
    "take_baseline",
    "wait_for_settle",
]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.05

# socket:[123] and pipe:[456] name a fresh inode every time; a block that
# closes one socket and opens another has not grown, so compare their kind.
_INODE_TARGET = re.compile(r"^(socket|pipe):\[\d+\]$")


@dataclass(frozen=True)
class Leak:
    kind: str  # "thread" | "task" | "child" | "fd" | "sockets"
    detail: str

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


def _fd_key(target: str) -> str:
    return _INODE_TARGET.sub(r"\1:", target)


def _native_thread_ids() -> set[str] | None:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return None


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


def _describe_child(child: psutil.Process) -> str | None:
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


def _describe_task(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    coro_name = getattr(coro, "__qualname__", type(coro).__name__)
    text = repr(task)
    if len(text) > 200:
        text = text[:197] + "..."
    return f"name={task.get_name()!r} coro={coro_name} {text}"


@dataclass(frozen=True)
class Baseline:
    """What existed at entry. Weak sets so the baseline keeps nothing alive."""

    threads: weakref.WeakSet[threading.Thread]
    thread_names: dict[int, str]
    loop: asyncio.AbstractEventLoop | None
    tasks: weakref.WeakSet[asyncio.Task[Any]] | None
    children: frozenset[tuple[int, float]]
    fds: dict[int, str]
    sockets: int
    allow_threads: tuple[str, ...] = ()
    taken_at: float = field(default_factory=time.monotonic)

    def leaks(self) -> list[Leak]:
        """One look at what grew since the baseline; no waiting."""
        return (
            self._thread_leaks()
            + self._task_leaks()
            + self._child_leaks()
            + self._fd_leaks()
            + self._socket_leaks()
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

    def _task_leaks(self) -> list[Leak]:
        if self.loop is None or self.tasks is None:
            return []
        return [
            Leak("task", _describe_task(task))
            for task in loop_tasks(self.loop)
            if task not in self.tasks and not task.done()
        ]

    def _child_leaks(self) -> list[Leak]:
        out = []
        for key, child in sorted(_children().items()):
            if key in self.children:
                continue
            detail = _describe_child(child)
            if detail is not None:
                out.append(Leak("child", detail))
        return out

    def _fd_leaks(self) -> list[Leak]:
        now = fd_targets()
        before = Counter(_fd_key(t) for t in self.fds.values())
        after = Counter(_fd_key(t) for t in now.values())
        out = []
        for fd, target in sorted(now.items()):
            if self.fds.get(fd) == target:
                continue  # untouched, or closed and reopened as the same thing
            if after[_fd_key(target)] > before[_fd_key(target)]:
                out.append(Leak("fd", f"{fd} -> {target}"))
        return out

    def _socket_leaks(self) -> list[Leak]:
        now = socket_count()
        if now > self.sockets:
            return [Leak("sockets", f"{self.sockets} -> {now} (+{now - self.sockets})")]
        return []


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
        sockets=socket_count(),
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
