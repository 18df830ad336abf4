"""A session worker with faults injected from outside, for tests and the bench:
`python -m loquilex_nb.testing.faulty_worker FAULT[,FAULT...]`, used as
`Supervisor(worker_argv=faulty_worker.argv("hang"))`.

It patches the shipped worker's classes before running it unchanged; the worker itself
knows nothing of faults. Faults:

- ``hang``: once the worker reports `running`, its main thread blocks in native code (a
  `read(2)` from a pipe nobody writes, called through ctypes, with the signals blocked in that
  thread so no handler can interrupt it), the way a decode stuck in the ASR library would. It
  no longer sees control messages and Python code on that thread never runs again; only the
  worker's own signal watcher thread can act on a SIGTERM.
- ``slow-start``: the model load blocks the same way; the worker never reaches `running`.
- ``ignore-sigterm``: SIGTERM is ignored (set right after the worker installs its handlers).
- ``crash-after-final``: the worker SIGKILLs itself right after its first final reaches the event
  pipe (what a client can have seen must already be on disk).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

from ..worker import decoder, eventout, main, signals, streaming

MODULE = "loquilex_nb.testing.faulty_worker"
FAULTS = ("hang", "slow-start", "ignore-sigterm", "crash-after-final")


def argv(*faults: str) -> list[str]:
    """The `worker_argv` of a worker with these faults."""
    unknown = set(faults) - set(FAULTS)
    if unknown or not faults:
        raise ValueError(f"faults must be some of {FAULTS}, got {faults}")
    return [sys.executable, "-m", MODULE, ",".join(faults)]


def block_in_native_code(*_args, **_kwargs) -> None:
    """Never returns: a blocking read on a pipe whose write end stays open and unwritten."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGUSR1, signal.SIGINT})
    r, w = os.pipe()
    libc = ctypes.CDLL(None, use_errno=True)  # ctypes releases the GIL: the other threads go on
    buf = ctypes.create_string_buffer(1)
    while True:
        libc.read(r, buf, 1)  # returns only if a signal not blocked here interrupts it (none)


def _after(cls: type, name: str, then) -> None:
    original = getattr(cls, name)

    def patched(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        then(self, *args, **kwargs)
        return result

    setattr(cls, name, patched)


def _kill_self(*_args, **_kwargs) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_after_a_final(_self, type_: str, **_fields) -> None:
    if type_ == "asr.final":
        _kill_self()


def inject(faults: list[str]) -> None:
    for fault in faults:
        if fault == "hang":
            streaming.StreamingRecognizer.__init__ = block_in_native_code  # built right after `running`
        elif fault == "slow-start":
            decoder.WhisperDecoder.__init__ = block_in_native_code  # the model load
        elif fault == "ignore-sigterm":
            _after(signals.Handlers, "__init__", lambda *_: signal.signal(signal.SIGTERM, signal.SIG_IGN))
        elif fault == "crash-after-final":
            _after(eventout.EventOut, "__call__", _kill_after_a_final)
        else:
            raise SystemExit(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


if __name__ == "__main__":
    inject([f for f in sys.argv[1].split(",") if f] if len(sys.argv) > 1 else [])
    main.run()
