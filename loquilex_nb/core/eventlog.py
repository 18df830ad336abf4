"""One session's events in seq order, as the supervisor and a server client both keep them.

A bounded log (a late reader finds what is still there, and learns when some fell out), the
finals and revisions kept whole (a late client's snapshot and `Session.text` need them all),
the latest partial, subscribers called on each event, and waiters woken by a change instead
of polling. It lives on one asyncio loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Callable

from .events import Event

log = logging.getLogger("loquilex_nb")


class EventLog:
    def __init__(self, capacity: int | None = None) -> None:
        self.events: deque[Event] = deque(maxlen=capacity)
        self.finals: list[Event] = []
        self.revisions: list[Event] = []
        self.partial: Event | None = None
        self._subscribers: list[Callable[[Event], None]] = []
        self._changed = asyncio.Event()

    @property
    def last_seq(self) -> int:
        """The seq of the newest event held (0: none). Seqs may skip where a gap lost some."""
        return self.events[-1].seq if self.events else 0

    def append(self, ev: Event) -> None:
        self.events.append(ev)
        if ev.type == "asr.final":
            self.finals.append(ev)
            self.partial = None
        elif ev.type == "asr.partial":
            self.partial = ev
        elif ev.type == "asr.revision":
            self.revisions.append(ev)
        for fn in list(self._subscribers):
            try:
                fn(ev)
            except Exception:  # a broken consumer must not stop the session
                log.exception("event subscriber failed for session %s", ev.sid)
        self.notify()

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Call `fn(event)` on the loop for every event appended from now on; returns the unsubscribe."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def after(self, seq: int) -> tuple[list[Event], bool]:
        """Events with a higher seq still in the log, and whether some were already dropped."""
        out: list[Event] = []
        for ev in reversed(self.events):
            if ev.seq <= seq:
                break
            out.append(ev)
        out.reverse()
        return out, bool(out) and out[0].seq > seq + 1

    def notify(self) -> None:
        """Wake every waiter: an event arrived, or something else they may wait for changed."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_until(self, pred: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until `pred()` holds, re-checked on each notify; False when `timeout` runs out first."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not pred():
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        return True

    async def next_after(self, seq: int, timeout: float | None, ended: Callable[[], bool]) -> tuple[list[Event], bool]:
        """`after(seq)`, waiting up to `timeout` for the first such event unless `ended()`."""
        await self.wait_until(lambda: self.last_seq > seq or ended(), timeout)
        return self.after(seq)


class EventLogView:
    """What a session core shows of its `eventlog` to the handle and the server (mixed in)."""

    eventlog: EventLog

    @property
    def alive(self) -> bool:
        raise NotImplementedError

    @property
    def seq(self) -> int:
        return self.eventlog.last_seq

    @property
    def finals(self) -> list[Event]:
        return self.eventlog.finals

    @property
    def revisions(self) -> list[Event]:
        return self.eventlog.revisions

    @property
    def partial(self) -> Event | None:
        return self.eventlog.partial

    def subscribe(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        return self.eventlog.subscribe(fn)

    def events_after(self, seq: int) -> tuple[list[Event], bool]:
        return self.eventlog.after(seq)

    async def next_events(self, seq: int, timeout: float | None = None) -> tuple[list[Event], bool]:
        """Events after `seq`, waiting up to `timeout` for the first (none: until one, or the end)."""
        return await self.eventlog.next_after(seq, timeout, lambda: not self.alive)
