"""Adopt orphaned descendants so a leak check can see (and reap) them.

A grandchild whose parent exits is normally re-parented to init, where no
check of ours can see it. ``become_subreaper()`` makes this process the one
that adopts it instead (Linux ``PR_SET_CHILD_SUBREAPER``). Adopted processes
were started by someone else, so nobody here will ever ``wait()`` for them:
``reap_adopted()`` collects the ones that exited and, on request, kills the
ones still running.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import subprocess
import sys

import psutil

__all__ = ["become_subreaper", "is_subreaper", "owned_pids", "reap_adopted"]

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _prctl(option: int, arg: int | ctypes.c_int | ctypes._Pointer) -> int:  # type: ignore[type-arg]
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl.restype = ctypes.c_int
    return libc.prctl(option, arg, 0, 0, 0)


def become_subreaper() -> bool:
    """Adopt orphaned descendants from now on; False where Linux prctl is missing."""
    if not sys.platform.startswith("linux"):
        return False
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1) == 0


def is_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    flag = ctypes.c_int(0)
    return _prctl(_PR_GET_CHILD_SUBREAPER, ctypes.pointer(flag)) == 0 and flag.value != 0


def owned_pids() -> set[int]:
    """Pids of children some object in this process started and may still wait for.

    subprocess (and asyncio's subprocess transports, which wrap it) and
    multiprocessing keep a Popen per child; an adopted orphan has none.
    Walks the heap, so call it only when an unexplained child turns up.
    """
    from multiprocessing import popen_fork

    pids = {p.pid for p in getattr(subprocess, "_active", []) or []}
    for obj in gc.get_objects():
        if isinstance(obj, (subprocess.Popen, popen_fork.Popen)):
            pid = getattr(obj, "pid", None)
            if pid and obj.returncode is None:
                pids.add(pid)
    return pids


def reap_adopted(*, kill: bool = False, among: set[int] | None = None) -> list[int]:
    """Wait for exited adopted children; with ``kill``, SIGKILL running ones first.

    ``among`` limits the candidates (e.g. to the leaks a check just reported).
    Returns the pids collected. Children with an owner in this process are
    left to that owner.
    """
    try:
        kids = psutil.Process().children()
    except psutil.Error:
        return []
    candidates = [k for k in kids if among is None or k.pid in among]
    if not candidates:
        return []
    owned = owned_pids()
    reaped = []
    for kid in candidates:
        if kid.pid in owned:
            continue
        try:
            if kill and kid.status() != psutil.STATUS_ZOMBIE:
                os.kill(kid.pid, signal.SIGKILL)
                kid.wait(5)  # psutil waits with waitpid for a child: this reaps it
                reaped.append(kid.pid)
                continue
            if kid.status() == psutil.STATUS_ZOMBIE:
                pid, _ = os.waitpid(kid.pid, os.WNOHANG)
                if pid:
                    reaped.append(pid)
        except (psutil.Error, ChildProcessError, ProcessLookupError):
            continue
    return reaped
