"""The worker's main loop: takes audio and control messages from the backlog, feeds the
recogniser, and decides how the session ends.

It blocks until something arrives (audio, a control message, the signal watcher's wake-up);
its only timeouts are deadlines: the stop budget, the next drop report, and none at all when
the recogniser has nothing it could do now."""

from __future__ import annotations

import queue
import time
from typing import Any, Callable

from .backlog import Backlog
from ..core.config import SAMPLE_RATE

STOP_BUDGET_S = 1.5  # after `stop`, queued audio is decoded for at most this long (default)
DROP_REPORT_S = 1.0


class Exit(Exception):
    """How the main loop ends: the reason, and whether the last audio is decoded."""

    def __init__(self, reason: str, decode: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decode = decode


class DropReporter:
    """Turns the backlog's drop counters into `audio-dropped` error events, at most one a second."""

    def __init__(self, backlog: Backlog, emit) -> None:
        self.backlog = backlog
        self.emit = emit
        self.reported = 0
        self.at = 0.0

    def due(self) -> float | None:
        """When the next report may go out (monotonic), if there is one to make."""
        return None if self.backlog.dropped_frames == self.reported else self.at + DROP_REPORT_S

    def __call__(self, force: bool = False) -> None:
        frames = self.backlog.dropped_frames
        now = time.monotonic()
        if frames == self.reported or (not force and now - self.at < DROP_REPORT_S):
            return
        self.reported, self.at = frames, now
        self.emit("error", data={
            "code": "audio-dropped",
            "detail": "audio arrived faster than it could be recognised; the excess was dropped",
            "backlog_s": round(self.backlog.samples / SAMPLE_RATE, 3),
            **self.backlog.drops(),
        })


def _wait_for(busy: bool, *deadlines: float | None) -> float | None:
    """The backlog's get timeout: none while the recogniser has work, else until the earliest deadline."""
    if busy:
        return 0.0
    due = [d for d in deadlines if d is not None]
    return max(0.0, min(due) - time.monotonic()) if due else None


def run_loop(rec, backlog: Backlog, quick, stopping: Callable[[], bool], halt_source: Callable[[], None], emit,
             kind: str, stop_budget: float = STOP_BUDGET_S, stop_signal_at: Callable[[], float | None] = lambda: None) -> Exit:
    from ..core.audio import AudioError, pcm_to_float32

    report = DropReporter(backlog, emit)
    stop_seen: float | None = None
    overrun = False  # the stop budget ran out: finish on the fast path
    busy = False  # the recogniser's last tick did something: it may have more to do now
    while True:
        if quick.is_set():
            report(force=True)
            return Exit("terminated", decode=False)
        budget_end = None
        if stopping():
            if kind != "push":
                halt_source()
                return Exit("stopped", decode=True)
            # the queued audio ahead of the stop is decoded, but only for so long: a flooded
            # session must still end within its grace
            now = time.monotonic()
            # the budget runs from the signal, not from when a long decode let us notice it
            stop_seen = stop_seen or min(now, stop_signal_at() or now)
            if now - stop_seen > stop_budget:
                overrun = True
                if backlog.discard_audio():
                    report(force=True)
            else:
                budget_end = stop_seen + stop_budget
        report()
        try:
            op, payload = backlog.get(timeout=_wait_for(busy, budget_end, report.due()))
        except queue.Empty:
            # nothing waiting: the live schedule's partial or revision, until it has none left
            busy = bool(rec.tick(backlogged=False))
            continue
        if overrun and op in ("audio", "pcm"):
            backlog.count_drop(payload)  # no decode may start once the budget is spent
            continue
        if op == "audio":
            rec.push(payload)
        elif op == "pcm":
            try:
                rec.push(pcm_to_float32(*payload))
            except AudioError as exc:
                emit("error", data={"code": "bad-pcm", "detail": str(exc)})
        elif op == "finalize":
            rec.finalize(decode=True)
        elif op == "stop":
            # for a push source everything fed before the stop was queued ahead of it
            report(force=True)
            return Exit("stopped", decode=not overrun)
        elif op == "source-end":
            return Exit("end-of-source", decode=True)
        elif op == "source-error":
            emit("error", data={"code": "audio", "detail": payload, "fatal": True})
            return Exit("source-error", decode=True)
        elif op == "eof":
            return Exit("supervisor-gone", decode=False)
        elif op == "wake":
            continue  # a flag changed (SIGTERM, SIGUSR1): the checks above see it
        elif op == "bad":
            emit("error", data={"code": "bad-control", "detail": f"malformed control message {payload!r}"})
        else:
            emit("error", data={"code": "bad-control", "detail": f"unknown control op {op!r}"})
        busy = bool(rec.tick(backlogged=backlog.qsize() > 1))
