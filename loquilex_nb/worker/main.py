"""The session worker process: `python -m loquilex_nb.worker`.

Reads its configuration as the first line on stdin, then control messages on the same
pipe (JSON lines; `pcm` headers are followed by raw bytes). Writes events as JSON lines on
the pipe that was its stdout; stdout itself is pointed at stderr so that a stray print from
a library cannot corrupt the event stream.

It finishes and exits on: end of its source, a polite `stop`, SIGTERM, EOF on the control
pipe (supervisor gone), or the parent-death signal. The last three take the fast path:
the current partial becomes the final without another decode, so the exit takes well under
a second.

Threads, each owned and joined here: the control reader (control.py), the signal watcher
(signals.py), a file feeder (feeders.py); the main thread runs the loop (loop.py).
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from typing import Any

from .backlog import Backlog
from .control import ControlReader, read_config
from .eventout import EventOut
from .feeders import FileFeeder, MicFeeder
from .loop import STOP_BUDGET_S, run_loop
from .signals import EXIT_DEADLINE_S, Handlers, Latch, SignalWatch, set_parent_death_signal

JOIN_S = 2.0  # bound on joining our own threads at exit; past it we leave with os._exit


def main() -> int:
    parent = int(os.environ.get("LOQUILEX_PARENT_PID", "0"))
    set_parent_death_signal()
    if parent and os.getppid() != parent:
        return 3  # the parent died before the death signal was armed
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    events_fd = os.dup(1)
    os.dup2(2, 1)
    emit = EventOut(events_fd)

    quick = Latch()  # leave now: SIGTERM, parent death, EOF on the control pipe
    stop_signal = Latch()  # SIGUSR1: the supervisor's out-of-band stop
    handlers = Handlers(quick, stop_signal)
    backlog = Backlog()
    leaving = Latch()  # set once the main thread is in its exit path

    def overdue() -> None:
        emit("error", data={"code": "worker-exit", "detail": f"still busy {EXIT_DEADLINE_S:g} s after being told to leave; leaving"})
        os._exit(6)

    watch = SignalWatch(handlers.read_fd, leaving, quick, stop_signal, backlog.wake, overdue)
    watch.start()
    threads: list[threading.Thread] = [watch]
    code = 4
    try:
        control_fd = sys.stdin.fileno()
        cfg, rest = read_config(control_fd, quick)
        if cfg is not None:
            reader = ControlReader(control_fd, backlog, leaving, quick, stop_signal, rest)
            reader.start()
            threads.append(reader)
            code = serve(cfg, emit, backlog, reader, quick, stop_signal, threads)
    finally:
        stuck = leave(threads, leaving, backlog)
        if stuck:
            # never reached in a healthy worker; the exit must stay bounded regardless
            emit("error", data={"code": "worker-exit", "detail": f"threads {stuck} did not stop; leaving"})
            os._exit(code or 5)
        handlers.close()
        leaving.close()
        quick.close()
        stop_signal.close()
    return code


def leave(threads: list[threading.Thread], leaving: Latch, backlog: Backlog, join_s: float = JOIN_S) -> list[str]:
    """The exit path: tell our threads, join them within `join_s`; returns those still alive."""
    leaving.set()
    # a reader waiting for room sleeps on the backlog's condition, not on a pipe: SIGTERM's
    # own wake-up may never come (the signal watcher leaves as soon as it sees `leaving`)
    backlog.interrupt()
    deadline = time.monotonic() + join_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t.name for t in threads if t.is_alive()]


def serve(cfg: dict[str, Any], emit: EventOut, backlog: Backlog, reader: ControlReader, quick: Latch,
          stop_signal: Latch, threads: list[threading.Thread]) -> int:
    """One session: load the model, start the source, run the loop, finalize. Threads it starts
    go into `threads` (main joins them)."""
    stop_source = threading.Event()
    feeder: FileFeeder | None = None
    mic: MicFeeder | None = None
    writer = None
    try:
        from ..core.config import AsrConfig
        from .captions import CaptionWriter
        from .decoder import WhisperDecoder
        from .streaming import StreamingRecognizer

        asr_cfg = AsrConfig(**cfg["asr"])
        writer = CaptionWriter(cfg["out_dir"], formats=cfg["formats"], final_lines=cfg["final_lines"])
        t0 = time.monotonic()
        if quick.is_set() or (reader.stop_requested.is_set() and not backlog.has_audio()):
            # stopped before it started: no model to load, nothing to finalize
            emit("status", data={"state": "finished", "reason": "stopped-before-start"})
            return 0
        decoder = WhisperDecoder(asr_cfg)
        source = cfg["source"]
        live = source["kind"] != "file" or bool(source.get("realtime"))
        emit("status", data={"state": "running", "model_load_s": round(time.monotonic() - t0, 3), "live": live})

        def on_event(type_: str, **fields: Any) -> None:
            # the files first: a worker killed between the two must not leave a final the
            # client saw missing on disk; a full disk must not swallow the event either
            failed = None
            try:
                if type_ == "asr.partial":
                    writer.partial(fields["text"])
                elif type_ == "asr.final":
                    writer.final(fields["text"], fields["t0"], fields["t1"], segment_id=fields["segment_id"])
                elif type_ == "asr.revision":
                    writer.revise(fields["segment_id"], fields["text"])
            except OSError as exc:
                failed = exc
            finally:
                emit(type_, **fields)
            if failed is not None:
                # the session goes on; the client still gets every caption as an event
                emit("error", data={"code": "caption-write", "detail": f"{type(failed).__name__}: {failed}"})

        rec = StreamingRecognizer(decoder, asr_cfg, on_event, live=live)
        if source["kind"] == "file":
            fd = source.get("fd")
            # the server opened the file confined to its root; the path is only for messages
            src: Any = os.fdopen(fd, "rb") if isinstance(fd, int) else source["path"]
            feeder = FileFeeder(src, bool(source.get("realtime")), backlog, stop_source)
            feeder.start()
            threads.append(feeder)
        elif source["kind"] == "mic":
            mic = MicFeeder(source.get("device"), backlog)
        budget = float(cfg.get("stop_budget", STOP_BUDGET_S))
        halt = feeder.halt if feeder is not None else stop_source.set
        reason = run_loop(rec, backlog, quick, reader.stopping, halt, emit, source["kind"], budget, lambda: stop_signal.at)
        # a stream that ended by itself has no one waiting on a stop's grace: its last finals
        # get their revision now, with the audio there is after them, unless a stop comes
        closing = (lambda: not quick.is_set() and not reader.stopping()) if reason.reason == "end-of-source" else None
        rec.finalize(decode=reason.decode, revise=closing)
        emit("status", data={"state": "finished", "reason": reason.reason, "decode_cpu_s": round(rec.decode_cpu, 3),
                             "closing_cpu_s": round(rec.closing_cpu, 3), "unrevised_finals": len(rec.revisions.queue),
                             "decodes": rec.decodes, **backlog.drops()})
        return 2 if reason.reason == "source-error" else 0
    except Exception as exc:
        emit("error", data={"code": "worker", "detail": f"{type(exc).__name__}: {exc}", "fatal": True})
        traceback.print_exc()
        return 2
    finally:
        if feeder is not None:
            feeder.halt()
        if mic is not None:
            mic.close()
        if writer is not None:
            writer.close()


def run() -> None:
    """Run the worker and leave the process."""
    status = main()
    # every thread is joined and every file closed by now: skip the interpreter's teardown
    # (unloading the ASR stack can take seconds on a loaded machine, and the stop grace counts)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
