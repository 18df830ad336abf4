"""The worker's exit path with its real threads: a control reader held by backpressure must
not hold the exit (the race behind a flooded worker taking 2 s to honour SIGTERM)."""

from __future__ import annotations

import json
import os
import time

from loquilex_nb.worker.backlog import Backlog
from loquilex_nb.worker.control import ControlReader
from loquilex_nb.worker.main import leave
from loquilex_nb.worker.signals import Latch

CHUNK = bytes(3200)  # 0.1 s of s16le


def pcm(n: int = 1) -> bytes:
    return (json.dumps({"op": "pcm", "n": len(CHUNK), "fmt": "s16le"}).encode() + b"\n" + CHUNK) * n


def blocked_reader(backlog: Backlog, quick: Latch, leaving: Latch):
    r, w = os.pipe()
    stop_signal = Latch()
    reader = ControlReader(r, backlog, leaving, quick, stop_signal)
    reader.start()
    os.write(w, pcm(3))  # the first chunk fits, the second waits for room nobody makes
    deadline = time.monotonic() + 10
    while backlog.qsize() < 1:
        assert time.monotonic() < deadline and reader.is_alive()
        time.sleep(0.01)
    time.sleep(0.3)
    assert reader.is_alive() and backlog.qsize() == 1, "the reader should be waiting for room"
    return reader, (r, w, stop_signal)


def release(reader, fds, backlog: Backlog, quick: Latch, leaving: Latch) -> None:
    leaving.set()
    backlog.interrupt()
    reader.join(5)
    r, w, stop_signal = fds
    os.close(r)
    os.close(w)
    stop_signal.close()
    quick.close()
    leaving.close()


def test_sigterm_seen_by_the_main_thread_alone_does_not_hold_the_exit():
    # SIGTERM's Python handler only sets the flag (it may take no lock); the watcher that would
    # wake the reader leaves as soon as the exit path starts, so the exit path must wake it
    backlog, quick, leaving = Backlog(limit_s=0.1), Latch(), Latch()
    reader, fds = blocked_reader(backlog, quick, leaving)
    try:
        quick.set()
        started = time.monotonic()
        stuck = leave([reader], leaving, backlog, join_s=3.0)
        took = time.monotonic() - started
    finally:
        release(reader, fds, backlog, quick, leaving)
    assert stuck == [] and not reader.is_alive()
    assert took < 1.0, f"the reader held the exit for {took:.1f} s"


def test_an_exit_for_any_reason_releases_a_reader_waiting_for_room():
    backlog, quick, leaving = Backlog(limit_s=0.1), Latch(), Latch()
    reader, fds = blocked_reader(backlog, quick, leaving)
    try:
        stuck = leave([reader], leaving, backlog, join_s=3.0)
    finally:
        release(reader, fds, backlog, quick, leaving)
    assert stuck == [] and not reader.is_alive()
    assert backlog.qsize() >= 1  # what was queued before the exit is still there (plus the eof)
