"""Sessions owned by real kernels (started through the server's REST API), and server cleanup.

A session created with ``"kernel_id"`` belongs to that kernel: a restart, a shutdown or the
kernel process dying (even when jupyter_server's restarter revives it under the same id) stops
the session and its worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import psutil
import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers import FIXTURES, pcm16
from tests.server.rest import post_session, wait_ended

SHORT = pcm16(FIXTURES / "short.wav")
LOQUILEX = {"heartbeat_interval": 0.5, "replay_window": 2.0, "sweep_interval": 0.3, "stop_grace": 3.0}


@pytest.fixture
def kernels(jp_fetch, jp_serverapp, jp_asyncio_loop):
    """Start kernels through REST; whatever is left is shut down (and reaped) at the end."""
    started = []

    async def start():
        r = await jp_fetch("api", "kernels", method="POST", body=json.dumps({"name": "python3"}))
        kid = json.loads(r.body)["id"]
        started.append(kid)
        return kid

    yield start

    async def shutdown_all():
        for kid in started:
            if kid in jp_serverapp.kernel_manager:
                await shutdown_kernel(jp_fetch, kid)

    jp_asyncio_loop.run_until_complete(shutdown_all())


async def shutdown_kernel(jp_fetch, kid, timeout=20.0):
    """DELETE the kernel; retried while jupyter_server refuses it mid-restart (it answers 500)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await jp_fetch("api", "kernels", kid, method="DELETE")
            return
        except HTTPClientError as e:
            if e.code == 404:
                return
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def sweeps_pass(manager, n: int, timeout: float = 30.0) -> None:
    """Wait until the kernel sweep has run n more times (what "nothing happened" must survive).

    With the sweep off (a long interval) there is nothing to wait for.
    """
    if manager.sweep_interval > 5:
        return
    target = manager.sweeps + n
    deadline = time.monotonic() + timeout
    while manager.sweeps < target:
        assert time.monotonic() < deadline, f"only {manager.sweeps - target + n} of {n} sweeps ran in {timeout} s"
        await asyncio.sleep(0.05)


def kernel_pid(serverapp, kid):
    provisioner = serverapp.kernel_manager.get_kernel(kid).provisioner
    return getattr(provisioner, "pid", None) or provisioner.process.pid


def is_gone(pid):
    """No such process, or a zombie (exited; holds nothing but its pid)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid, timeout):
    deadline = time.monotonic() + timeout
    while not is_gone(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)  # conftest.gone() would block the loop the server runs on
    return True


def cmdline(proc):
    try:
        return " ".join(proc.cmdline()) if proc.status() != psutil.STATUS_ZOMBIE else ""
    except psutil.Error:
        return ""


async def owned_pair(jp_fetch, kid):
    """One session owned by the kernel, one owned by nobody (which must survive)."""
    owned = await post_session(jp_fetch, {"source": {"kind": "push"}, "kernel_id": kid})
    free = await post_session(jp_fetch, {"source": {"kind": "push"}})
    assert owned["owner"] == kid and free["owner"] is None
    return owned, free


async def test_owned_sessions_show_up_by_kernel(jp_fetch, kernels):
    kid = await kernels()
    owned, free = await owned_pair(jp_fetch, kid)
    res = json.loads((await jp_fetch("loquilex", "api", "resources")).body)
    assert res["by_kernel"] == {kid: 1}
    assert {r["sid"]: r["owner"] for r in res["sessions"]} == {owned["id"]: kid, free["id"]: None}
    for info in (owned, free):
        await jp_fetch("loquilex", "api", "sessions", info["id"], method="DELETE")
    await shutdown_kernel(jp_fetch, kid)


BOTH = {}
EVENTS_ONLY = {"sweep_interval": 600.0}  # only the kernel_actions listener can notice
SWEEP_ONLY = {"stop_on_kernel_restart": False}  # no listener: only the sweep can notice
paths = pytest.mark.parametrize("jp_server_config", [BOTH, EVENTS_ONLY], indirect=True, ids=["events+sweep", "events-only"])


@paths
async def test_kernel_restart_stops_its_sessions(jp_serverapp, jp_fetch, kernels, manager):
    kid = await kernels()
    owned, free = await owned_pair(jp_fetch, kid)
    old_pid = kernel_pid(jp_serverapp, kid)
    await jp_fetch("api", "kernels", kid, "restart", method="POST", body="")
    info = await wait_ended(jp_fetch, owned["id"], 15)
    # stopped by the restart hook's polite stop, not escalated to a signal
    assert info["state"] == "stopped" and info["end"]["kind"] == "clean", info
    assert await wait_gone(owned["pid"], 10)
    assert kernel_pid(jp_serverapp, kid) != old_pid  # it really restarted
    # the other session is untouched, and the restarted kernel can own new sessions
    assert json.loads((await jp_fetch("loquilex", "api", "sessions", free["id"])).body)["end"] is None
    again = await post_session(jp_fetch, {"source": {"kind": "push"}, "kernel_id": kid})
    await sweeps_pass(manager, 3)  # the new kernel pid is not mistaken for a dead one
    assert json.loads((await jp_fetch("loquilex", "api", "sessions", again["id"])).body)["end"] is None
    for s in (free, again):
        await jp_fetch("loquilex", "api", "sessions", s["id"], method="DELETE")
    await shutdown_kernel(jp_fetch, kid)


@pytest.mark.parametrize(
    "jp_server_config", [BOTH, EVENTS_ONLY, SWEEP_ONLY], indirect=True, ids=["events+sweep", "events-only", "sweep-only"]
)
async def test_kernel_shutdown_stops_its_sessions(jp_fetch, kernels, manager):
    kid = await kernels()
    owned, free = await owned_pair(jp_fetch, kid)
    r = await jp_fetch("api", "kernels", kid, method="DELETE")
    assert r.code == 204
    info = await wait_ended(jp_fetch, owned["id"], 15)
    assert info["state"] == "stopped" and info["end"]["kind"] == "clean", info
    assert await wait_gone(owned["pid"], 10)
    assert json.loads((await jp_fetch("loquilex", "api", "sessions", free["id"])).body)["end"] is None
    with pytest.raises(HTTPClientError) as e:  # a gone kernel cannot own new sessions
        await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}, "kernel_id": kid}))
    assert e.value.code == 400 and kid in json.loads(e.value.response.body)["message"]
    await jp_fetch("loquilex", "api", "sessions", free["id"], method="DELETE")


@pytest.mark.parametrize(
    "jp_server_config", [BOTH, EVENTS_ONLY], indirect=True, ids=["events+sweep", "restarter-event-only"]
)
async def test_sigkilled_kernel_stops_its_sessions(jp_serverapp, jp_fetch, kernels):
    kid = await kernels()
    owned, free = await owned_pair(jp_fetch, kid)
    pid = kernel_pid(jp_serverapp, kid)
    os.kill(pid, signal.SIGKILL)
    # the sweep sees the dead pid within a sweep or two; the restarter's own restart event
    # comes after its time_to_dead (3 s); either must end the session within ~10 s (+ load)
    info = await wait_ended(jp_fetch, owned["id"], 15)
    assert info["state"] == "stopped"
    assert await wait_gone(owned["pid"], 10)
    assert json.loads((await jp_fetch("loquilex", "api", "sessions", free["id"])).body)["end"] is None
    await jp_fetch("loquilex", "api", "sessions", free["id"], method="DELETE")
    # jupyter_server's restarter revives the kernel under the same id; end it once it settled
    await shutdown_kernel(jp_fetch, kid)


@pytest.mark.parametrize("jp_server_config", [{"stop_on_kernel_restart": False}], indirect=True, ids=["keep-on-restart"])
async def test_stop_on_kernel_restart_false_keeps_sessions(jp_serverapp, jp_fetch, kernels, manager):
    kid = await kernels()
    owned = await post_session(jp_fetch, {"source": {"kind": "push"}, "kernel_id": kid})
    try:
        await jp_fetch("api", "kernels", kid, "restart", method="POST", body="")
        await sweeps_pass(manager, 5)
        info = json.loads((await jp_fetch("loquilex", "api", "sessions", owned["id"])).body)
        assert info["state"] in ("starting", "running") and info["end"] is None, info
    finally:
        await jp_fetch("loquilex", "api", "sessions", owned["id"], method="DELETE")
        await shutdown_kernel(jp_fetch, kid)


async def test_server_cleanup_stops_everything_and_closes_sockets(jp_serverapp, jp_fetch, jp_ws_fetch, kernels, manager):
    kid = await kernels()
    a = await post_session(jp_fetch, {"source": {"kind": "push"}, "kernel_id": kid})
    b = await post_session(jp_fetch, {"source": {"kind": "push"}})
    ws = await jp_ws_fetch("loquilex", "api", "sessions", a["id"], "events")
    await ws.write_message(json.dumps({"type": "hello"}))
    assert json.loads(await ws.read_message())["type"] == "welcome"
    for i in range(0, len(SHORT), 3200):  # mid-utterance
        await ws.write_message(SHORT[i : i + 3200].tobytes(), binary=True)
    workers = [a["pid"], b["pid"]]
    assert all(psutil.pid_exists(p) for p in workers)

    started = time.monotonic()
    await jp_serverapp._cleanup()
    assert time.monotonic() - started < 20
    assert all(is_gone(p) for p in workers), [p for p in workers if not is_gone(p)]
    assert not [c for c in psutil.Process().children(recursive=True) if "loquilex_nb.worker" in cmdline(c)]
    assert kid not in jp_serverapp.kernel_manager  # the server's own kernel cleanup ran too
    envs = []
    while (msg := await asyncio.wait_for(ws.read_message(), 10)) is not None:
        envs.append(json.loads(msg))
    # sessions stop before sockets close: the final of the interrupted utterance arrives
    assert ws.close_code == 1000, (ws.close_code, ws.close_reason)
    assert envs[-1]["type"] == "eos" and any(e["type"] == "asr.final" for e in envs)
    seqs = [e["seq"] for e in envs if e["seq"] is not None]
    assert seqs == sorted(set(seqs))
    assert manager.hub.channels == {} and manager.supervisor.list() == []
    for info in (a, b):  # stopped by the ladder, not left to the parent-death signal
        assert manager.supervisor.get(info["id"]).end.kind in ("clean", "terminated")
    # a second cleanup (pytest-jupyter runs one at teardown) is harmless
    await jp_serverapp._cleanup()
    with pytest.raises(HTTPClientError) as e:  # no new sessions once shut down
        await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))
    assert e.value.code == 503
