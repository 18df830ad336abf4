"""The control pipe (the worker's stdin): the configuration line, then control messages
(JSON lines; `pcm` headers are followed by raw bytes)."""

from __future__ import annotations

import json
import os
import select
import threading
from typing import Any

from .backlog import Backlog
from .signals import Latch

MAX_CONFIG_BYTES = 1 << 20  # the first line; the server's own options are far smaller
MAX_PCM_BYTES = 16 << 20  # one pcm message; the server sends at most max_message_bytes
READ_BLOCK = 1 << 18


def read_config(fd: int, quick: Latch) -> tuple[dict[str, Any] | None, bytes]:
    """The first line, read in blocks (bounded; SIGTERM or EOF ends the wait); returns it and
    what followed."""
    buf = bytearray()
    while b"\n" not in buf:
        if len(buf) > MAX_CONFIG_BYTES:
            return None, b""
        ready, _, _ = select.select([fd, quick], [], [])
        if quick.is_set():
            return None, b""
        data = os.read(fd, READ_BLOCK)
        if not data:
            return None, b""
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    return json.loads(line), rest


class ControlReader(threading.Thread):
    """Moves control messages from the pipe into the backlog, in order. It blocks only on the
    pipe (with the leave pipe beside it) and while waiting for room: exit is always seen."""

    def __init__(self, fd: int, backlog: Backlog, leaving: Latch, quick: Latch, stop_signal: Latch, initial: bytes = b"") -> None:
        super().__init__(name="loquilex-control")
        self.stop_requested = threading.Event()
        self.fd = fd
        self.backlog = backlog
        self.leaving = leaving  # set once the main thread is in its exit path
        self.quick = quick
        self.stop_signal = stop_signal  # SIGUSR1: the supervisor is stopping us, out of band
        self.buf = bytearray(initial)

    def stopping(self) -> bool:
        return self.stop_signal.is_set() or self.stop_requested.is_set()

    def _read_more(self) -> bool:
        ready, _, _ = select.select([self.fd, self.leaving], [], [])
        if self.leaving in ready:
            return False
        data = os.read(self.fd, READ_BLOCK)
        if not data:
            return False
        self.buf += data
        return True

    def _line(self) -> bytes | None:
        scanned = 0
        while True:
            i = self.buf.find(b"\n", scanned)
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            scanned = len(self.buf)
            if scanned > MAX_CONFIG_BYTES:
                return None  # not our supervisor speaking: treat as a broken pipe
            if not self._read_more():
                return None

    def _exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._read_more():
                return None
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def _gone(self) -> None:
        self.quick.set()  # EOF: the supervisor is gone
        self.backlog.put_control("eof", None, must=True)

    def _audio(self, data: bytes, fmt: str) -> bool:
        samples = len(data) // (4 if fmt == "f32le" else 2)
        # backpressure while running; once stopping, the stop must not wait behind audio; the
        # exit path must not wait behind us
        self.backlog.wait_room(samples, lambda: self.quick.is_set() or self.leaving.is_set() or self.stopping())
        if self.quick.is_set() or self.leaving.is_set():
            return False
        self.backlog.put_audio("pcm", (data, fmt), samples, len(data))
        return True

    def run(self) -> None:
        while True:
            line = self._line()
            if line is None:
                return self._gone()
            try:
                msg = json.loads(line)
                op = msg["op"]
            except (ValueError, KeyError, TypeError):
                self.backlog.put_control("bad", line[:200].decode("utf-8", "replace"))
                continue
            if op == "pcm":
                n = msg.get("n", 0)
                if not isinstance(n, int) or not 0 <= n <= MAX_PCM_BYTES:
                    return self._gone()  # cannot resynchronise the stream
                data = self._exact(n)
                if data is None:
                    return self._gone()
                if self.stop_requested.is_set():
                    continue  # audio after stop is not part of this session
                if not self._audio(data, msg.get("fmt", "s16le")):
                    return self._gone()
            else:
                if op == "stop":
                    # a file or microphone stops now; queued audio must not delay it
                    self.stop_requested.set()
                self.backlog.put_control(op, msg, must=op == "stop")
