"""The session worker process: `python -m loquilex_nb.worker`.

Reads its configuration as the first line on stdin, then control messages on the same
pipe (JSON lines; `pcm` headers are followed by raw bytes). Writes events as JSON lines on
the pipe that was its stdout; stdout itself is pointed at stderr so that a stray print from
a library cannot corrupt the event stream.

It finishes and exits on: end of its source, a polite `stop`, SIGTERM, EOF on the control
pipe (supervisor gone), or the parent-death signal. The last three take the fast path:
the current partial becomes the final without another decode, so the exit takes well under
a second.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import select
import signal
import sys
import threading
import time
import traceback
from typing import Any

import numpy as np

PR_SET_PDEATHSIG = 1
CHUNK_S = 0.1


class QuickExit:
    """The "leave now" flag. Set from a signal handler, so it takes no lock.

    PR_SET_PDEATHSIG can fire several times while a parent with many threads dies; a
    handler that took a lock (threading.Event.set) could be re-entered while holding it
    and deadlock the worker forever. A plain attribute store cannot.
    """

    def __init__(self) -> None:
        self.flag = False

    def set(self, *_: Any) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


class Exit(Exception):
    """Raised inside the main loop to leave it; carries how we finish."""

    def __init__(self, reason: str, decode: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.decode = decode


def set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


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


class ControlReader(threading.Thread):
    """Moves control messages from the pipe into the main loop's queue, in order."""

    def __init__(self, fd: int, items: queue.Queue, wake_fd: int, quick: QuickExit) -> None:
        super().__init__(name="loquilex-control")
        self.stop_requested = threading.Event()
        self.fd = fd
        self.items = items
        self.wake_fd = wake_fd
        self.quick = quick
        self.buf = b""

    def _read_more(self) -> bool:
        while True:
            ready, _, _ = select.select([self.fd, self.wake_fd], [], [])
            if self.wake_fd in ready:
                return False
            data = os.read(self.fd, 65536)
            if not data:
                return False
            self.buf += data
            return True

    def _line(self) -> bytes | None:
        while b"\n" not in self.buf:
            if not self._read_more():
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def _exact(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            if not self._read_more():
                return None
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def run(self) -> None:
        while True:
            line = self._line()
            if line is None:
                self.quick.set()  # EOF: the supervisor is gone
                self.items.put(("eof", None))
                return
            try:
                msg = json.loads(line)
                op = msg["op"]
            except (ValueError, KeyError, TypeError):
                self.items.put(("bad", line[:200].decode("utf-8", "replace")))
                continue
            if op == "pcm":
                data = self._exact(int(msg.get("n", 0)))
                if data is None:
                    self.quick.set()
                    self.items.put(("eof", None))
                    return
                self.items.put(("pcm", (data, msg.get("fmt", "s16le"))))
            else:
                if op == "stop":
                    # a file or microphone stops now; queued audio must not delay it
                    self.stop_requested.set()
                self.items.put((op, msg))


class FileFeeder(threading.Thread):
    """Decodes the file and queues chunks, paced to the clock when realtime."""

    def __init__(self, path: str, realtime: bool, items: queue.Queue, stop: threading.Event) -> None:
        super().__init__(name="loquilex-file")
        self.path = path
        self.realtime = realtime
        self.items = items
        self.stop = stop

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        from .audio import AudioError, iter_file_chunks

        start = time.monotonic()
        played = 0.0
        try:
            for chunk in iter_file_chunks(self.path, CHUNK_S):
                if self.realtime:
                    due = start + played - time.monotonic()
                    if due > 0 and self.stop.wait(due):
                        return
                played += len(chunk) / 16000
                if not self._put(("audio", chunk)):
                    return
        except AudioError as exc:
            self._put(("source-error", str(exc)))
            return
        self._put(("source-end", None))


class MicFeeder:
    def __init__(self, device: Any, items: queue.Queue) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as exc:
            raise RuntimeError(
                "microphone input needs the optional 'sounddevice' package and PortAudio: "
                f"pip install 'loquilex-nb[mic]' ({exc})"
            ) from exc

        def callback(indata, frames, time_info, status):
            items.put(("audio", indata[:, 0].astype(np.float32).copy()))

        try:
            self.stream = sounddevice.InputStream(
                samplerate=16000, channels=1, dtype="float32", device=device, callback=callback,
                blocksize=int(16000 * CHUNK_S),
            )
            self.stream.start()
        except Exception as exc:
            raise RuntimeError(f"cannot open microphone {device!r}: {exc}") from exc

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def main() -> int:
    parent = int(os.environ.get("LOQUILEX_PARENT_PID", "0"))
    set_parent_death_signal()
    if parent and os.getppid() != parent:
        return 3  # the parent died before the death signal was armed
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    events_fd = os.dup(1)
    os.dup2(2, 1)
    emit = EventOut(events_fd)
    fault = os.environ.get("LOQUILEX_WORKER_FAULT", "")

    quick = QuickExit()
    stop_source = threading.Event()
    signal.signal(signal.SIGTERM, quick.set)
    if "ignore-sigterm" in fault:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    control_fd = sys.stdin.fileno()
    first = b""
    while not first.endswith(b"\n"):
        data = os.read(control_fd, 1)
        if not data:
            return 4
        first += data
    cfg = json.loads(first)

    items: queue.Queue = queue.Queue(maxsize=200)
    wake_r, wake_w = os.pipe()
    reader = ControlReader(control_fd, items, wake_r, quick)
    reader.start()
    feeder: FileFeeder | None = None
    mic: MicFeeder | None = None
    writer = None
    code = 0
    try:
        from .captions import CaptionWriter
        from .config import AsrConfig
        from .decoder import WhisperDecoder
        from .streaming import StreamingRecognizer

        asr_cfg = AsrConfig(**cfg["asr"])
        writer = CaptionWriter(cfg["out_dir"], formats=cfg["formats"], final_lines=cfg["final_lines"])
        t0 = time.monotonic()
        if quick.is_set() or (reader.stop_requested.is_set() and not _audio_queued(items)):
            # stopped before it started: no model to load, nothing to finalize
            emit("status", data={"state": "finished", "reason": "stopped-before-start"})
            return 0
        decoder = WhisperDecoder(asr_cfg)
        source = cfg["source"]
        live = source["kind"] != "file" or bool(source.get("realtime"))
        emit("status", data={"state": "running", "model_load_s": round(time.monotonic() - t0, 3), "live": live})

        def on_event(type_: str, **fields: Any) -> None:
            emit(type_, **fields)  # the event first: a full disk must not swallow it
            try:
                if type_ == "asr.partial":
                    writer.partial(fields["text"])
                elif type_ == "asr.final":
                    writer.final(fields["text"], fields["t0"], fields["t1"], segment_id=fields["segment_id"])
                elif type_ == "asr.revision":
                    writer.revise(fields["segment_id"], fields["text"])
            except OSError as exc:
                # the session goes on; the client still gets every caption as an event
                emit("error", data={"code": "caption-write", "detail": f"{type(exc).__name__}: {exc}"})
            if "crash-after-final" in fault and type_ == "asr.final":
                os.kill(os.getpid(), signal.SIGKILL)

        rec = StreamingRecognizer(decoder, asr_cfg, on_event, live=live)
        if source["kind"] == "file":
            feeder = FileFeeder(source["path"], bool(source.get("realtime")), items, stop_source)
            feeder.start()
        elif source["kind"] == "mic":
            mic = MicFeeder(source.get("device"), items)
        if "hang" in fault:
            # a worker stuck in a long decode: deaf to control messages, not to signals
            while not quick.is_set():
                time.sleep(0.1)
            return 0
        reason = run_loop(rec, items, quick, reader.stop_requested, stop_source, emit, source["kind"])
        rec.finalize(decode=reason.decode)
        emit("status", data={"state": "finished", "reason": reason.reason, "decode_cpu_s": round(rec.decode_cpu, 3), "decodes": rec.decodes})
        if reason.reason == "source-error":
            code = 2
    except Exception as exc:
        emit("error", data={"code": "worker", "detail": f"{type(exc).__name__}: {exc}", "fatal": True})
        traceback.print_exc()
        code = 2
    finally:
        stop_source.set()
        if mic is not None:
            mic.close()
        if feeder is not None:
            feeder.join()
        os.write(wake_w, b"x")
        reader.join()
        os.close(wake_r)
        os.close(wake_w)
        if writer is not None:
            writer.close()
    return code


def _audio_queued(items: queue.Queue) -> bool:
    with items.mutex:
        return any(op == "pcm" for op, _ in items.queue)


def run_loop(rec, items, quick, stop_requested, stop_source, emit, kind: str) -> Exit:
    from .audio import AudioError, pcm_to_float32

    while True:
        if quick.is_set():
            return Exit("terminated", decode=False)
        if kind != "push" and stop_requested.is_set():
            stop_source.set()
            return Exit("stopped", decode=True)
        try:
            op, payload = items.get(timeout=0.05)
        except queue.Empty:
            rec.tick(backlogged=False)
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
            return Exit("stopped", decode=True)
        elif op in ("source-end",):
            return Exit("end-of-source", decode=True)
        elif op == "source-error":
            emit("error", data={"code": "audio", "detail": payload, "fatal": True})
            return Exit("source-error", decode=True)
        elif op == "eof":
            return Exit("supervisor-gone", decode=False)
        elif op == "bad":
            emit("error", data={"code": "bad-control", "detail": f"malformed control message {payload!r}"})
        else:
            emit("error", data={"code": "bad-control", "detail": f"unknown control op {op!r}"})
        rec.tick(backlogged=items.qsize() > 1)


if __name__ == "__main__":
    sys.exit(main())
