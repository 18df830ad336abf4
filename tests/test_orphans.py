"""Workers never outlive the process that owns them: real processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from conftest import gone

OWNER = textwrap.dedent(
    """
    import json, sys, time
    import loquilex_nb as lx
    s = lx.session(lx.PushSource(), output_root=sys.argv[1]).start()
    t = lx.session(lx.PushSource(), output_root=sys.argv[1]).start()
    while s.status != "running" or t.status != "running":
        time.sleep(0.02)
    print(json.dumps([s.pid, t.pid]), flush=True)
    mode = sys.argv[2]
    if mode == "wait":
        s.wait()
    elif mode == "with":
        with lx.session(lx.PushSource(), output_root=sys.argv[1]) as u:
            try:
                u.wait()
            except KeyboardInterrupt:
                print(json.dumps({"interrupted": u.pid}), flush=True)
                raise
    elif mode == "exit":
        pass  # leave without closing: interpreter exit must stop everything
    """
)


def start_owner(tmp_path, mode):
    proc = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path / "out"), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def test_owner_killed_with_sigkill_takes_its_workers_within_a_second(tmp_path):
    proc, pids = start_owner(tmp_path, "wait")
    workers = [psutil.Process(p) for p in pids]
    proc.kill()
    proc.wait()
    t = time.monotonic()
    for w in workers:
        assert gone(w.pid, 3.0), f"worker {w.pid} outlived its SIGKILLed owner"
    elapsed = time.monotonic() - t
    assert elapsed < 1.5, f"workers took {elapsed:.2f}s to go after their owner died"
    proc.stdout.close()
    proc.stderr.close()


def test_sigint_in_with_block_stops_sessions_and_exits(tmp_path):
    proc, pids = start_owner(tmp_path, "with")
    time.sleep(1.0)  # let the third session start
    kids = [c.pid for c in psutil.Process(proc.pid).children()]
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "interrupted" in out
    for pid in set(kids) | set(pids):
        assert gone(pid, 0.5), f"worker {pid} survived Ctrl-C of its owner"


def test_interpreter_exit_stops_unclosed_sessions(tmp_path):
    proc, pids = start_owner(tmp_path, "exit")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    for pid in pids:
        assert gone(pid, 0.5), f"worker {pid} survived interpreter exit"
