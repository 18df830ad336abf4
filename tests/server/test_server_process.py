"""A real `jupyter server` process: its workers must not outlive it, however it ends.

SIGTERM runs the server's own shutdown (stop_extension stops every session); SIGKILL runs
nothing, so the workers' parent-death signal has to take them down.
"""

from __future__ import annotations

import signal
import subprocess
import time

import psutil
import pytest

from tests.helpers import gone


def create_push_sessions(server, n):
    pids = server.create_push_sessions(n, running=False)
    assert len(set(pids)) == n and all(psutil.pid_exists(p) for p in pids)
    # the workers are the server's children, in their own process groups
    children = {c.pid for c in psutil.Process(server.proc.pid).children()}
    assert set(pids) <= children
    return pids


def wait_all_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    return [p for p in pids if not gone(p, max(0.0, deadline - time.monotonic()) or 0.01)]


@pytest.mark.leak_settle(10)
def test_sigterm_stops_the_server_and_its_workers(server):
    server.start()
    pids = create_push_sessions(server, 2)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        code = server.proc.wait(20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server ignored SIGTERM for 20 s:\n{server.log()}")
    took = time.monotonic() - started
    assert code in (0, -signal.SIGTERM), server.log()
    # Reaped by the server itself before it exited: no waiting here. Had only the
    # parent-death signal ended them, they would still exist at this instant (pytest,
    # a subreaper, adopts them; nobody reaps them but its leak check).
    unreaped = [p for p in pids if psutil.pid_exists(p)]
    assert unreaped == [], f"workers {unreaped} were not stopped and reaped by the server:\n{server.log()}"
    # a clean shutdown: the extension stopped its sessions itself (no orphan to kill)
    assert took < 15, took
    assert "stop_extension did not finish cleanly" not in server.log()


@pytest.mark.leak_settle(10)
def test_sigkill_leaves_no_worker_behind(server):
    server.start()
    (running,) = create_push_sessions(server, 1)
    sid = server.request("GET", "/loquilex/api/sessions")[1]["sessions"][0]["id"]
    deadline = time.monotonic() + 20
    while server.request("GET", f"/loquilex/api/sessions/{sid}")[1]["state"] != "running":
        assert time.monotonic() < deadline, "the worker never reported running"
        time.sleep(0.05)
    (starting,) = create_push_sessions(server, 1)  # killed before it even loaded its model
    pids = [running, starting]
    server.proc.kill()
    server.proc.wait(10)
    started = time.monotonic()
    survivors = wait_all_gone(pids, 2.0)
    assert survivors == [], f"workers {survivors} outlived a SIGKILLed server by {time.monotonic() - started:.1f} s"


@pytest.mark.leak_settle(10)
def test_the_harness_close_leaves_nothing_behind(server):
    """What a failing test relies on: `close()` of a running server kills it and what it started."""
    server.start()
    pids = create_push_sessions(server, 2)
    server.close()
    assert server.proc.returncode == -signal.SIGKILL
    assert server.stop_descendants >= 2 and set(server.left_behind) <= set(pids)
    assert wait_all_gone(pids, 5.0) == []
    server.close()  # idempotent
    assert server.proc.returncode == -signal.SIGKILL
