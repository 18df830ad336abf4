"""How the worker hears that it must stop: SIGTERM (also the parent-death signal), SIGUSR1
(the supervisor's out-of-band stop) and EOF on the control pipe (raised by the reader)."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Callable

PR_SET_PDEATHSIG = 1
EXIT_DEADLINE_S = 1.0  # from SIGTERM / EOF to leaving, whatever the main thread is doing


def set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class Latch:
    """A flag that, once set, stays set; `fileno()` turns readable then and stays so (nobody
    reads the pipe), so any blocking `select` can include it.

    Set from a signal handler, so it takes no lock: PR_SET_PDEATHSIG can fire several times
    while a parent with many threads dies, and a handler that took a lock
    (threading.Event.set) could be re-entered while holding it and deadlock the worker
    forever. A plain attribute store and a write to a non-blocking pipe cannot.
    """

    def __init__(self) -> None:
        self.flag = False
        self.at: float | None = None  # when it was first set (monotonic)
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)

    def set(self, *_: Any) -> None:
        if self.at is None:
            self.at = time.monotonic()
        if not self.flag:
            self.flag = True
            try:
                os.write(self._w, b"!")
            except OSError:
                pass  # closed at exit, or full: readable either way

    def is_set(self) -> bool:
        return self.flag

    def fileno(self) -> int:
        return self._r

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)


class Handlers:
    """The worker's SIGTERM and SIGUSR1 handlers, and the wakeup pipe the C-level handler writes
    each signal's number to (read by `SignalWatch`, even while the main thread is in native code)."""

    def __init__(self, quick: Latch, stop_signal: Latch) -> None:
        signal.signal(signal.SIGTERM, quick.set)
        signal.signal(signal.SIGUSR1, stop_signal.set)
        self.read_fd, self._w = os.pipe()
        os.set_blocking(self._w, False)
        signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)

    def close(self) -> None:
        # the process leaves right after this; a late signal must not touch closed fds
        for num in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(num, signal.SIG_IGN)
        signal.set_wakeup_fd(-1)
        os.close(self.read_fd)
        os.close(self._w)


class SignalWatch(threading.Thread):
    """Sees SIGTERM and SIGUSR1 at once, through the signal wakeup fd, even while the main
    thread sits in a long native decode (Python runs its handlers only between bytecodes),
    and wakes the main loop with `notify`. Once told to leave (`quick`), the main thread gets
    `EXIT_DEADLINE_S`; past it `on_overdue` runs (it leaves the process)."""

    def __init__(self, sig_fd: int, leaving: Latch, quick: Latch, stop_signal: Latch,
                 notify: Callable[[], None], on_overdue: Callable[[], None]) -> None:
        super().__init__(name="loquilex-signals")
        self.sig_fd = sig_fd
        self.leaving = leaving  # set once the main thread is in its exit path
        self.quick = quick
        self.stop_signal = stop_signal
        self.notify = notify
        self.on_overdue = on_overdue

    def run(self) -> None:
        while True:
            watched: list[Any] = [self.sig_fd, self.leaving]
            timeout = None
            if self.quick.at is None:
                watched.append(self.quick.fileno())  # EOF seen by the reader arms the deadline too
            else:
                timeout = max(0.0, self.quick.at + EXIT_DEADLINE_S - time.monotonic())
            ready, _, _ = select.select(watched, [], [], timeout)
            if self.leaving in ready:
                return  # the main thread is in its exit path (bounded on its own)
            if self.sig_fd in ready:
                for num in os.read(self.sig_fd, 64):
                    if num == signal.SIGTERM:
                        self.quick.set()
                    elif num == signal.SIGUSR1:
                        self.stop_signal.set()
                self.notify()
            if self.quick.at is not None and time.monotonic() >= self.quick.at + EXIT_DEADLINE_S:
                return self.on_overdue()
