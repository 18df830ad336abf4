"""Audio and control messages waiting for the main loop, bounded in seconds of audio."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from ..core.config import SAMPLE_RATE

BACKLOG_S = 20.0  # audio waiting for the recogniser; producers wait for room beyond it
MAX_CONTROL_ITEMS = 1000  # control messages waiting (finalize, bad lines...); more are dropped


class Backlog:
    """Producers get backpressure: the reader waits for room (so the supervisor's pipe fills and
    the server stops reading the client's socket), but a producer's abort condition is checked
    again whenever it may have changed (`interrupt`, or any control message), so SIGTERM, the
    out-of-band stop (SIGUSR1) and exit are always seen. Once a stop is under way, audio beyond
    the bound is dropped and counted instead (the main loop reports the counts as an
    `audio-dropped` error event).
    """

    def __init__(self, limit_s: float = BACKLOG_S) -> None:
        self.items: queue.Queue = queue.Queue()
        self.limit = int(limit_s * SAMPLE_RATE)
        self.room = threading.Condition()
        self.samples = 0
        self.controls = 0
        self.dropped_frames = 0
        self.dropped_bytes = 0
        self.dropped_samples = 0

    def _fits(self, samples: int) -> bool:
        return not self.samples or self.samples + samples <= self.limit

    def wait_room(self, samples: int, abort: Callable[[], bool]) -> bool:
        """Wait until `samples` more fit; False if abort() became true first. Whoever makes
        abort() true calls `interrupt` afterwards."""
        with self.room:
            while not self._fits(samples):
                if abort():
                    return False
                self.room.wait()
        return True

    def interrupt(self) -> None:
        """Have producers waiting for room check their abort condition again."""
        with self.room:
            self.room.notify_all()

    def put_audio(self, op: str, payload: Any, samples: int, nbytes: int, force: bool = False) -> bool:
        with self.room:
            if not force and not self._fits(samples):
                self.dropped_frames += 1
                self.dropped_bytes += nbytes
                self.dropped_samples += samples
                return False
            self.samples += samples
        self.items.put((op, payload, samples))
        return True

    def put_control(self, op: str, payload: Any, must: bool = False) -> None:
        with self.room:
            if self.controls >= MAX_CONTROL_ITEMS and not must:
                self.dropped_frames += 1
                return
            self.controls += 1
            self.room.notify_all()  # a control message can come with a changed abort condition
        self.items.put((op, payload, 0))

    def wake(self) -> None:
        """Wake the main loop (and waiting producers): a flag it checks may have changed."""
        self.put_control("wake", None, must=True)

    def get(self, timeout: float | None) -> tuple[str, Any]:
        """The next item; waits at most `timeout` (None: until one comes), else queue.Empty."""
        op, payload, samples = self.items.get(timeout=timeout)
        with self.room:
            if samples:
                self.samples -= samples
                self.room.notify_all()
            else:
                self.controls -= 1
        return op, payload

    def discard_audio(self) -> int:
        """Drop every queued audio chunk (a stop past its budget); control messages stay."""
        with self.room, self.items.mutex:
            kept = [item for item in self.items.queue if not item[2]]
            gone = [item for item in self.items.queue if item[2]]
            self.items.queue.clear()
            self.items.queue.extend(kept)
            samples = sum(item[2] for item in gone)
            self.samples -= samples
            self.dropped_frames += len(gone)
            self.dropped_samples += samples
            self.dropped_bytes += sum(len(item[1][0]) for item in gone if item[0] == "pcm")
            self.room.notify_all()
        return len(gone)

    def count_drop(self, payload: Any) -> None:
        data = payload[0] if isinstance(payload, tuple) else payload
        with self.room:
            self.dropped_frames += 1
            self.dropped_bytes += len(data) if isinstance(data, bytes) else 0
            self.dropped_samples += len(data) // 2 if isinstance(data, bytes) else len(data)

    def has_audio(self) -> bool:
        return self.samples > 0

    def qsize(self) -> int:
        return self.items.qsize()

    def drops(self) -> dict[str, Any]:
        return {
            "dropped_frames": self.dropped_frames,
            "dropped_bytes": self.dropped_bytes,
            "dropped_s": round(self.dropped_samples / SAMPLE_RATE, 3),
        }
