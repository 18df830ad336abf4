"""Workers never outlive the process that owns them: real processes, real signals.

The workers' parent-death signal (PR_SET_PDEATHSIG) would take them down
whenever their owner dies, so "no worker after the owner exited" proves
nothing about the orderly paths. Each orderly path is judged from inside
the owner, *before* it exits: an ``atexit`` hook (it runs after threading's
exit hooks, where the runtime stops unclosed sessions) records how every
session ended and whether its worker still ran; a Ctrl-C in a ``with``
block reports the same right after the block closed. Only the SIGKILL test
relies on the parent-death signal, and says so.
"""

import json
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import psutil

from tests.helpers import SAMPLE, gone

OWNER = textwrap.dedent(
    """
    import atexit, json, signal, sys, time, wave
    import psutil
    import loquilex_nb as lx

    # Started from a shell that ignores SIGINT, Python would keep ignoring it;
    # this owner's whole point is to see Ctrl-C.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    root, mode, evidence, sample = sys.argv[1:5]


    def wait_running(*sessions):
        deadline = time.monotonic() + 120
        while any(x.status != "running" for x in sessions):
            assert time.monotonic() < deadline, [x.status for x in sessions]
            assert all(x.end is None for x in sessions), [x.end for x in sessions]
            time.sleep(0.02)


    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


    def report(sessions):
        return {
            "status": [x.status for x in sessions],
            "end": [x.end and x.end.kind for x in sessions],
            "alive": [alive(x.pid) for x in sessions],
        }


    def say(**kw):
        print(json.dumps(kw), flush=True)


    s = lx.session(lx.PushSource(), output_root=root).start()
    t = lx.session(lx.PushSource(), output_root=root).start()
    wait_running(s, t)


    @atexit.register
    def _evidence():
        with open(evidence, "w") as f:
            json.dump(report([s, t]), f)


    say(workers=[s.pid, t.pid])
    if mode == "wait":
        s.wait()
    elif mode == "with":
        try:
            with lx.session(lx.PushSource(), output_root=root) as u:
                wait_running(u)
                # A few seconds and a pause: one sentence to finalize, no backlog that
                # would make the stop on Ctrl-C a race with the decoder.
                with wave.open(sample) as w:
                    u.feed(w.readframes(6 * 16000) + bytes(2 * 16000 * 2))
                deadline = time.monotonic() + 120
                while not u.finals:
                    assert time.monotonic() < deadline and u.end is None, (u.status, u.end)
                    time.sleep(0.02)
                say(third=u.pid)
                u.wait()
        except KeyboardInterrupt:
            # The with block has closed u on the way out, before this process exits.
            say(interrupted=u.pid, final_file=str(u.outputs["final"]),
                finals=[e.text for e in u.finals], **report([u]))
            raise
    elif mode == "exit":
        pass  # leave without closing: interpreter exit must stop everything
    """
)

CLEAN = {"status": ["stopped", "stopped"], "end": ["clean", "clean"], "alive": [False, False]}


def _default_sigint() -> None:
    # Tests may run from a shell that ignores SIGINT; the owner must not inherit that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def owner(tmp_path, mode):
    """The owner process and its two workers' pids; killed if a failed test left it running."""
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "out"), mode,
         str(tmp_path / "evidence.json"), str(SAMPLE)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    try:
        yield proc, read_json(proc)["workers"]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def read_json(proc) -> dict:
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        raise AssertionError(proc.stderr.read())
    return json.loads(line)


def evidence(tmp_path) -> dict:
    with open(tmp_path / "evidence.json") as f:
        return json.load(f)


def test_owner_killed_with_sigkill_takes_its_workers_within_a_second(tmp_path):
    # The one path where nothing orderly runs: the parent-death signal is the proof.
    with owner(tmp_path, "wait") as (proc, pids):
        proc.kill()
        proc.wait()
    t = time.monotonic()
    for pid in pids:
        assert gone(pid, 3.0), f"worker {pid} outlived its SIGKILLed owner"
    elapsed = time.monotonic() - t
    assert elapsed < 1.5, f"workers took {elapsed:.2f}s to go after their owner died"
    assert not (tmp_path / "evidence.json").exists()  # nothing ran in the owner


def test_sigint_in_with_block_stops_sessions_and_exits(tmp_path):
    with owner(tmp_path, "with") as (proc, pids):
        third = read_json(proc)["third"]  # running, and it has written a final
        assert third in {c.pid for c in psutil.Process(proc.pid).children()}
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    interrupted = json.loads(out.strip().splitlines()[-1])
    # Closed by the with block, before the owner exited: not by the parent-death signal.
    assert interrupted["interrupted"] == third
    assert interrupted["status"] == ["stopped"] and interrupted["end"] == ["clean"], interrupted
    assert interrupted["alive"] == [False], interrupted
    # Its last final reached the caption file.
    assert interrupted["finals"], interrupted
    with open(interrupted["final_file"]) as f:
        assert interrupted["finals"][-1].strip() in f.read()
    # The other two were stopped by interpreter exit, again before the owner was gone.
    assert evidence(tmp_path) == CLEAN
    for pid in [*pids, third]:
        assert gone(pid, 0.5), f"worker {pid} survived Ctrl-C of its owner"


def test_interpreter_exit_stops_unclosed_sessions(tmp_path):
    with owner(tmp_path, "exit") as (proc, pids):
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert evidence(tmp_path) == CLEAN, err
    for pid in pids:
        assert gone(pid, 0.5), f"worker {pid} survived interpreter exit"
