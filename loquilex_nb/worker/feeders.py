"""Sources the worker reads itself: a file (decoded, paced to the clock when realtime) and a
microphone. Push audio comes over the control pipe instead (control.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from .backlog import Backlog
from ..core.config import SAMPLE_RATE

CHUNK_S = 0.1


class FileFeeder(threading.Thread):
    """Decodes the file and queues chunks, paced to the clock when realtime."""

    def __init__(self, source: Any, realtime: bool, backlog: Backlog, stop: threading.Event) -> None:
        super().__init__(name="loquilex-file")
        self.source = source  # a path, or a file the server opened confined to its root
        self.realtime = realtime
        self.backlog = backlog
        self.stop = stop

    def halt(self) -> None:
        self.stop.set()
        self.backlog.interrupt()  # it may be waiting for room

    def _put(self, op: str, payload: Any) -> bool:
        if op != "audio":
            self.backlog.put_control(op, payload, must=True)
            return True
        if not self.backlog.wait_room(len(payload), self.stop.is_set):
            return False
        self.backlog.put_audio(op, payload, len(payload), 0, force=True)
        return True

    def run(self) -> None:
        from ..core.audio import AudioError, iter_file_chunks

        start = time.monotonic()
        played = 0.0
        try:
            for chunk in iter_file_chunks(self.source, CHUNK_S):
                if self.realtime:
                    due = start + played - time.monotonic()
                    if due > 0 and self.stop.wait(due):
                        return
                played += len(chunk) / SAMPLE_RATE
                if not self._put("audio", chunk):
                    return
        except AudioError as exc:
            self._put("source-error", str(exc))
            return
        finally:
            if not isinstance(self.source, str):
                self.source.close()
        self._put("source-end", None)


class MicFeeder:
    def __init__(self, device: Any, backlog: Backlog) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as exc:
            raise RuntimeError(
                "microphone input needs the optional 'sounddevice' package and PortAudio: "
                f"pip install 'loquilex-nb[mic]' ({exc})"
            ) from exc

        def callback(indata, frames, time_info, status):
            chunk = indata[:, 0].astype(np.float32).copy()
            backlog.put_audio("audio", chunk, len(chunk), chunk.nbytes)  # a real-time device: drop, never block

        try:
            self.stream = sounddevice.InputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="float32", device=device, callback=callback,
                blocksize=int(SAMPLE_RATE * CHUNK_S),
            )
            self.stream.start()
        except Exception as exc:
            raise RuntimeError(f"cannot open microphone {device!r}: {exc}") from exc

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()
