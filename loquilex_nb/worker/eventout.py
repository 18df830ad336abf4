"""The event pipe: events as JSON lines on the fd that was the worker's stdout."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any


class EventOut:
    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "w", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def __call__(self, type_: str, **fields: Any) -> None:
        event = {"type": type_, "t_wall": time.time(), "t_mono": time.monotonic()}
        event.update({k: v for k, v in fields.items() if v is not None})
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            try:
                self._file.write(line + "\n")
            except (BrokenPipeError, ValueError):
                pass  # nobody is listening any more; finish writing files regardless
