"""A notebook's own check that its kernel is back where it started (threads, children, fds, sockets).

A frontend may add long-lived resources of its own to the kernel while a notebook runs:
JupyterLab >= 4.4 with ipykernel >= 7 sends each comm target over a kernel *subshell*
(`commsOverSubshells: perCommTarget`), so the first widget makes ipykernel start a
`subshell-<id>` thread with an event loop (an epoll fd and a socket pair) and four inproc zmq
sockets. Those belong to the frontend's connection, not to the notebook, and live as long as
the kernel. So do the TCP connections a client (the Jupyter server) makes to the kernel's own
ZMQ ports: one more appears when it connects again. They are recognised by identity (ipykernel's
subshell manager; the ports in the kernel's connection file) and left out of both the baseline
and the later counts; nothing else is: every other thread, child, fd and socket still counts. Where the manager cannot be read (ipykernel < 7, no kernel), nothing is
left out.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
import time
from typing import Any

from ..core.resources import ProcessCounters, process_counters

__all__ = ["Baseline", "frontend_resources", "kernel_counters"]


def _subshells() -> list[Any]:
    try:
        from IPython import get_ipython
    except ImportError:
        return []
    shell = get_ipython()
    kernel = getattr(shell, "kernel", None)
    channel = getattr(kernel, "shell_channel_thread", None)
    manager = getattr(channel, "_manager", None)  # created with the first subshell only
    cache = getattr(manager, "_cache", None)
    lock = getattr(manager, "_lock_cache", None)
    if not isinstance(cache, dict) or lock is None:
        return []
    with lock:
        return list(cache.values())


def _loop_fds(thread: Any) -> set[int]:
    loop = getattr(getattr(thread, "io_loop", None), "asyncio_loop", None)
    fds = set()
    selector = getattr(loop, "_selector", None)
    if selector is not None:
        fds.add(selector.fileno())
    for name in ("_ssock", "_csock"):  # the loop's self-pipe, a socket pair
        sock = getattr(loop, name, None)
        if sock is not None and sock.fileno() >= 0:
            fds.add(sock.fileno())
    return fds


def _zmq_fds(thread: Any) -> set[int]:
    fds = set()
    for pair_name in ("shell_channel_to_subshell", "subshell_to_shell_channel"):
        pair = getattr(thread, pair_name, None)
        for sock_name in ("from_socket", "to_socket"):
            sock = getattr(pair, sock_name, None)
            if sock is not None and not sock.closed:
                fds.add(sock.FD)  # the socket's signaller (an eventfd)
    return fds


def _kernel_port_connections() -> set[int]:
    """fds of the TCP connections accepted on this kernel's own ZMQ ports: a client (the
    Jupyter server) connecting again, e.g. after a websocket reconnect under load, adds one."""
    try:
        import psutil
        from ipykernel.connect import get_connection_info

        info = get_connection_info(unpack=True)
        ports = {info.get(f"{name}_port") for name in ("shell", "iopub", "stdin", "control", "hb")} - {None, 0}
        conns = psutil.Process().net_connections(kind="tcp")
    except Exception:
        return set()  # not in a kernel: nothing is the frontend's
    return {c.fd for c in conns if c.fd >= 0 and c.raddr and c.laddr.port in ports}


def frontend_resources() -> tuple[set[int], set[int]]:
    """(native thread ids, fds) of this kernel's subshells and of the connections its clients
    made to its ports: the frontend's, not the notebook's."""
    tids: set[int] = set()
    fds: set[int] = _kernel_port_connections()
    for thread in _subshells():
        if not thread.is_alive():
            continue
        try:
            thread_fds = _loop_fds(thread) | _zmq_fds(thread)
        except Exception:
            continue  # an ipykernel we do not know: count it like anything else
        if thread.native_id is not None:
            tids.add(thread.native_id)
        fds |= thread_fds
    return tids, fds


def _is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def kernel_counters() -> ProcessCounters:
    """`process_counters()` of this process without the frontend's subshells."""
    tids, fds = frontend_resources()
    now = process_counters()
    if not tids and not fds:
        return now
    names = tuple(t.name for t in threading.enumerate() if t.native_id not in tids)
    return dataclasses.replace(
        now, threads=now.threads - len(tids), thread_names=names, fds=now.fds - len(fds),
        sockets=now.sockets - sum(map(_is_socket, fds)),
    )


class Baseline:
    """The kernel's counters now; `check()` later waits until they are back (or fails)."""

    def __init__(self) -> None:
        self.counters = kernel_counters()

    def back(self, now: ProcessCounters) -> bool:
        b = self.counters
        return (now.threads <= b.threads and now.children == b.children
                and now.fds <= b.fds and now.sockets <= b.sockets)

    def check(self, timeout: float = 20.0) -> ProcessCounters:
        """Poll until back to the baseline, up to `timeout` s; AssertionError with both if not.

        Things closed a moment ago settle: ipykernel closes the iopub pipe of a thread that
        printed or updated a widget up to 10 s after the thread ended (its event-pipe gc).
        """
        deadline = time.monotonic() + timeout
        while True:
            now = kernel_counters()
            if self.back(now):
                return now
            if time.monotonic() > deadline:
                raise AssertionError(f"not back to baseline after {timeout:g} s:\n  baseline {self.counters}\n  now      {now}")
            time.sleep(0.1)

    def __repr__(self) -> str:
        c = self.counters
        return f"<Baseline threads={c.threads} children={len(c.children)} fds={c.fds} sockets={c.sockets}>"
