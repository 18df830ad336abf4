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
SAMPLE_RATE = 16000
MAX_CONFIG_BYTES = 1 << 20  # the first line; the server's own options are far smaller
MAX_PCM_BYTES = 16 << 20  # one pcm message; the server sends at most max_message_bytes
READ_BLOCK = 1 << 18
BACKLOG_S = 20.0  # audio waiting for the recogniser; producers wait for room beyond it
MAX_CONTROL_ITEMS = 1000  # control messages waiting (finalize, bad lines...); more are dropped
STOP_BUDGET_S = 1.5  # after `stop`, queued audio is decoded for at most this long (default)
JOIN_S = 2.0  # bound on joining our own threads at exit; past it we leave with os._exit
EXIT_DEADLINE_S = 1.0  # from SIGTERM / EOF to leaving, whatever the main thread is doing
DROP_REPORT_S = 1.0


class QuickExit:
    """The "leave now" flag. Set from a signal handler, so it takes no lock.

    PR_SET_PDEATHSIG can fire several times while a parent with many threads dies; a
    handler that took a lock (threading.Event.set) could be re-entered while holding it
    and deadlock the worker forever. A plain attribute store cannot.
    """

    def __init__(self) -> None:
        self.flag = False
        self.at: float | None = None  # when it was first set (monotonic)

    def set(self, *_: Any) -> None:
        if self.at is None:
            self.at = time.monotonic()
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


class Backlog:
    """Audio and control messages waiting for the main loop, bounded in seconds of audio.

    Producers get backpressure: the reader waits for room (so the supervisor's pipe fills and
    the server stops reading the client's socket), but only in short, interruptible steps, so
    SIGTERM, the out-of-band stop (SIGUSR1) and exit are always seen. Once a stop is under
    way, audio beyond the bound is dropped and counted instead (the main loop reports the
    counts as an `audio-dropped` error event).
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

    def wait_room(self, samples: int, abort) -> bool:
        """Wait until `samples` more fit; False if abort() became true first."""
        with self.room:
            while not self._fits(samples):
                if abort():
                    return False
                self.room.wait(0.05)
        return True

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
        self.items.put((op, payload, 0))

    def get(self, timeout: float) -> tuple[str, Any]:
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


class ControlReader(threading.Thread):
    """Moves control messages from the pipe into the backlog, in order. It blocks only on the
    pipe (with the wake pipe beside it) and in short waits for room: exit is always seen."""

    def __init__(self, fd: int, backlog: Backlog, wake_fd: int, quick: QuickExit, stop_signal: QuickExit, initial: bytes = b"") -> None:
        super().__init__(name="loquilex-control")
        self.stop_requested = threading.Event()
        self.fd = fd
        self.backlog = backlog
        self.wake_fd = wake_fd
        self.quick = quick
        self.stop_signal = stop_signal  # SIGUSR1: the supervisor is stopping us, out of band
        self.buf = bytearray(initial)

    def stopping(self) -> bool:
        return self.stop_signal.is_set() or self.stop_requested.is_set()

    def _read_more(self) -> bool:
        ready, _, _ = select.select([self.fd, self.wake_fd], [], [])
        if self.wake_fd in ready:
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
        # backpressure while running; once stopping, the stop must not wait behind audio
        self.backlog.wait_room(samples, lambda: self.quick.is_set() or self.stopping())
        if self.quick.is_set():
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


class SignalWatch(threading.Thread):
    """Sees SIGTERM and SIGUSR1 at once, through the signal wakeup fd, even while the main
    thread sits in a long native decode (Python runs its handlers only between bytecodes).
    Once told to leave, the main thread gets `EXIT_DEADLINE_S`; past it we leave anyway."""

    def __init__(self, sig_fd: int, wake_fd: int, quick: QuickExit, stop_signal: QuickExit, on_overdue) -> None:
        super().__init__(name="loquilex-signals")
        self.sig_fd = sig_fd
        self.wake_fd = wake_fd
        self.quick = quick
        self.stop_signal = stop_signal
        self.on_overdue = on_overdue

    def run(self) -> None:
        since: float | None = None
        while True:
            ready, _, _ = select.select([self.sig_fd, self.wake_fd], [], [], 0.1)
            if self.wake_fd in ready:
                return  # the main thread is in its exit path (bounded on its own)
            if self.sig_fd in ready:
                for num in os.read(self.sig_fd, 64):
                    if num == signal.SIGTERM:
                        self.quick.set()
                    elif num == signal.SIGUSR1:
                        self.stop_signal.set()
            if self.quick.is_set():
                since = since or time.monotonic()
                if time.monotonic() - since > EXIT_DEADLINE_S:
                    return self.on_overdue()


class FileFeeder(threading.Thread):
    """Decodes the file and queues chunks, paced to the clock when realtime."""

    def __init__(self, source: Any, realtime: bool, backlog: Backlog, stop: threading.Event) -> None:
        super().__init__(name="loquilex-file")
        self.source = source  # a path, or a file the server opened confined to its root
        self.realtime = realtime
        self.backlog = backlog
        self.stop = stop

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
                played += len(chunk) / 16000
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
                samplerate=16000, channels=1, dtype="float32", device=device, callback=callback,
                blocksize=int(16000 * CHUNK_S),
            )
            self.stream.start()
        except Exception as exc:
            raise RuntimeError(f"cannot open microphone {device!r}: {exc}") from exc

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


def read_config(fd: int, quick: QuickExit) -> tuple[dict[str, Any] | None, bytes]:
    """The first line, read in blocks (bounded, stop flag checked); returns it and what followed."""
    buf = bytearray()
    while b"\n" not in buf:
        if quick.is_set() or len(buf) > MAX_CONFIG_BYTES:
            return None, b""
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        data = os.read(fd, READ_BLOCK)
        if not data:
            return None, b""
        buf += data
    line, _, rest = bytes(buf).partition(b"\n")
    return json.loads(line), rest


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
    stop_signal = QuickExit()
    stop_source = threading.Event()
    signal.signal(signal.SIGTERM, quick.set)
    signal.signal(signal.SIGUSR1, stop_signal.set)
    if "ignore-sigterm" in fault:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sig_r, sig_w = os.pipe()
    os.set_blocking(sig_w, False)
    signal.set_wakeup_fd(sig_w, warn_on_full_buffer=False)

    control_fd = sys.stdin.fileno()
    cfg, rest = read_config(control_fd, quick)
    if cfg is None:
        return 4

    backlog = Backlog()
    wake_r, wake_w = os.pipe()
    reader = ControlReader(control_fd, backlog, wake_r, quick, stop_signal, rest)
    reader.start()

    def overdue() -> None:
        emit("error", data={"code": "worker-exit", "detail": f"still busy {EXIT_DEADLINE_S:g} s after being told to leave; leaving"})
        os._exit(6)

    watch = SignalWatch(sig_r, wake_r, quick, stop_signal, overdue)
    watch.start()
    feeder: FileFeeder | None = None
    mic: MicFeeder | None = None
    writer = None
    code = 0
    try:
        from .captions import CaptionWriter
        from ..core.config import AsrConfig
        from .decoder import WhisperDecoder
        from .streaming import StreamingRecognizer

        asr_cfg = AsrConfig(**cfg["asr"])
        writer = CaptionWriter(cfg["out_dir"], formats=cfg["formats"], final_lines=cfg["final_lines"])
        t0 = time.monotonic()
        while "slow-start" in fault and not quick.is_set():
            time.sleep(0.05)  # a model load that takes forever: deaf to stop, not to SIGTERM
        if quick.is_set() or (reader.stop_requested.is_set() and not backlog.has_audio()):
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
            fd = source.get("fd")
            # the server opened the file confined to its root; the path is only for messages
            src: Any = os.fdopen(fd, "rb") if isinstance(fd, int) else source["path"]
            feeder = FileFeeder(src, bool(source.get("realtime")), backlog, stop_source)
            feeder.start()
        elif source["kind"] == "mic":
            mic = MicFeeder(source.get("device"), backlog)
        if "hang" in fault:
            # a worker stuck in a long decode: deaf to control messages, not to signals
            while not quick.is_set():
                time.sleep(0.1)
            return 0
        budget = float(cfg.get("stop_budget", STOP_BUDGET_S))
        reason = run_loop(rec, backlog, quick, reader.stopping, stop_source, emit, source["kind"], budget, lambda: stop_signal.at)
        rec.finalize(decode=reason.decode)
        emit("status", data={"state": "finished", "reason": reason.reason, "decode_cpu_s": round(rec.decode_cpu, 3),
                             "decodes": rec.decodes, **backlog.drops()})
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
        os.write(wake_w, b"x")
        deadline = time.monotonic() + JOIN_S
        for thread in (watch, feeder, reader):
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
        if writer is not None:
            writer.close()
        stuck = [t.name for t in (watch, feeder, reader) if t is not None and t.is_alive()]
        if stuck:
            # never reached in a healthy worker; the exit must stay bounded regardless
            emit("error", data={"code": "worker-exit", "detail": f"threads {stuck} did not stop; leaving"})
            os._exit(code or 5)
        signal.set_wakeup_fd(-1)
        for fd in (wake_r, wake_w, sig_r, sig_w):
            os.close(fd)
    return code


class DropReporter:
    """Turns the backlog's drop counters into `audio-dropped` error events, at most one a second."""

    def __init__(self, backlog: Backlog, emit) -> None:
        self.backlog = backlog
        self.emit = emit
        self.reported = 0
        self.at = 0.0

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


def run_loop(rec, backlog: Backlog, quick, stopping, stop_source, emit, kind: str, stop_budget: float = STOP_BUDGET_S, stop_signal_at=lambda: None) -> Exit:
    from ..core.audio import AudioError, pcm_to_float32

    report = DropReporter(backlog, emit)
    stop_seen: float | None = None
    overrun = False  # the stop budget ran out: finish on the fast path
    while True:
        if quick.is_set():
            report(force=True)
            return Exit("terminated", decode=False)
        if stopping():
            if kind != "push":
                stop_source.set()
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
        report()
        try:
            op, payload = backlog.get(timeout=0.05)
        except queue.Empty:
            rec.tick(backlogged=False)
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
        rec.tick(backlogged=backlog.qsize() > 1)
