"""Leak check for notebooks run by nbval: what a notebook starts, it must stop.

nbval items are not pytest functions, so no fixture reaches them. The pytest
plugin asks the notebook's kernel for a snapshot (``snapshot()``, run through
``user_expressions`` so it leaves no trace in the notebook's namespace or
outputs) before the first cell and again after the last one, and compares
them by identity: thread idents, native thread ids, fd numbers with their
targets, child (pid, start time). A thread, child process or fd the notebook
left behind fails the notebook's ``leakcheck`` item.

What ipykernel itself creates after the first snapshot is not the
notebook's doing, and is tolerated by identity, narrowly: the one fd of each
per-thread IOPub "event pipe" (a zmq socket ipykernel opens the first time a
thread prints, and closes itself some 10 s after that thread ends), and
Python threads named in ``KERNEL_ALLOWANCE``.
"""

from __future__ import annotations

import ast
import json
import os
import threading
import time
from typing import Any

import psutil

from .leakcheck import Leak, LeakError
from ..core.resources import fd_targets

__all__ = ["KERNEL_ALLOWANCE", "compare", "kernel_snapshot", "snapshot"]

# Python thread names ipykernel starts lazily, on demand of the frontend
# protocol rather than of notebook code. Empty until one is shown to exist.
KERNEL_ALLOWANCE: tuple[str, ...] = ()


def _ipykernel_fds() -> list[int]:
    """fds of ipykernel's per-thread IOPub event pipes (its own, not the notebook's)."""
    try:
        from IPython import get_ipython

        kernel = get_ipython().kernel  # type: ignore[union-attr]
        pipes = list(kernel.iopub_thread._event_pipes.values())
    except Exception:
        return []
    fds = []
    for pipe in pipes:
        try:
            fds.append(int(pipe.FD))
        except Exception:
            continue
    return fds

_EXPR = "__import__('loquilex_nb.testing.notebook_leakcheck', fromlist=['_']).snapshot_json()"


def snapshot() -> dict[str, Any]:
    """This process's threads, native threads, fds and children."""
    threads = {str(t.ident): t.name for t in threading.enumerate() if t.is_alive()}
    python_tids = {str(t.native_id) for t in threading.enumerate() if t.native_id}
    native: dict[str, str] = {}
    try:
        for tid in os.listdir("/proc/self/task"):
            if tid in python_tids:
                continue
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    native[tid] = f.read().strip()
            except OSError:
                continue
    except OSError:
        pass
    children = []
    for child in psutil.Process().children(recursive=True):
        try:
            children.append(
                [child.pid, child.create_time(), child.status(), " ".join(child.cmdline())]
            )
        except psutil.Error:
            continue
    return {
        "threads": threads,
        "native": native,
        "fds": {str(fd): target for fd, target in fd_targets().items()},
        "children": children,
        "ipykernel_fds": _ipykernel_fds(),
    }


def snapshot_json() -> str:
    return json.dumps(snapshot())


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[Leak]:
    leaks = []
    for ident, name in sorted(after["threads"].items()):
        if ident not in before["threads"] and not name.startswith(KERNEL_ALLOWANCE):
            leaks.append(Leak("thread", f"name={name!r} ident={ident} (in the kernel)"))
    for tid, comm in sorted(after["native"].items()):
        if tid not in before["native"]:
            leaks.append(Leak("native-thread", f"tid={tid} comm={comm!r} (in the kernel)"))
    old_kids = {(pid, ctime) for pid, ctime, _, _ in before["children"]}
    for pid, ctime, status, cmd in after["children"]:
        if (pid, ctime) not in old_kids:
            leaks.append(
                Leak("child", f"pid={pid} status={status} cmdline={cmd!r} (of the kernel)", pid)
            )
    ipykernel_fds = {str(fd) for fd in after.get("ipykernel_fds", ())}
    for fd, target in sorted(after["fds"].items(), key=lambda kv: int(kv[0])):
        if before["fds"].get(fd) != target and fd not in ipykernel_fds:
            kind = "socket" if target.startswith("socket:") else "fd"
            leaks.append(Leak(kind, f"{fd} -> {target} (in the kernel)"))
    return leaks


def kernel_snapshot(kernel: Any, timeout: float = 30.0) -> dict[str, Any]:
    """Run ``snapshot()`` in an nbval ``RunningKernel`` without touching its outputs."""
    msg_id = kernel.kc.execute(
        "", silent=True, store_history=False, user_expressions={"s": _EXPR}, allow_stdin=False
    )
    deadline = time.monotonic() + timeout
    while True:
        msg = kernel.get_message("shell", timeout=max(0.1, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") == msg_id:
            break
    # Drain this request's iopub messages so nbval never sees them.
    kernel.await_idle(msg_id, max(0.1, deadline - time.monotonic()))
    result = msg["content"].get("user_expressions", {}).get("s", {})
    if result.get("status") != "ok":
        raise RuntimeError(f"leak snapshot failed in the kernel: {result}")
    return json.loads(ast.literal_eval(result["data"]["text/plain"]))


def check_kernel(kernel: Any, before: dict[str, Any], settle: float) -> None:
    """Raise LeakError for what is still new in the kernel after ``settle`` s."""
    deadline = time.monotonic() + settle
    while True:
        leaks = compare(before, kernel_snapshot(kernel))
        if not leaks or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    if leaks:
        _kill_leaked_children(leaks)
        raise LeakError(leaks, settle)


def _kill_leaked_children(leaks: list[Leak]) -> None:
    # Reported; now make sure they do not outlive the run (the kernel's
    # exit would only orphan them).
    for leak in leaks:
        if leak.kind == "child" and leak.pid:
            try:
                psutil.Process(leak.pid).kill()
            except psutil.Error:
                pass
