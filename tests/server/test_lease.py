"""Browser sessions and their lease (jupyter_server_ext/lease.py) over real HTTP and WebSocket."""

import asyncio
import json
import time

import psutil
import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers import FIXTURES, pcm16
from tests.server.rest import wait_ended

LEASE = 1.5
LOQUILEX = {"browser_lease": LEASE, "heartbeat_interval": 0.5, "replay_window": 2.0, "sweep_interval": 0.5}


async def create(jp_fetch, body=None):
    r = await jp_fetch("loquilex", "api", "browser-sessions", method="POST", body=json.dumps(body or {}))
    assert r.code == 201
    return json.loads(r.body)


async def leases(jp_fetch):
    return json.loads((await jp_fetch("loquilex", "api", "browser-sessions")).body)["sessions"]


async def connect(jp_ws_fetch, sid, running=True):
    """A client past hello; with ``running``, also past the worker's model load."""
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    await ws.write_message(json.dumps({"type": "hello"}))
    assert json.loads(await ws.read_message())["type"] == "welcome"
    while running:
        env = json.loads(await asyncio.wait_for(ws.read_message(), 60))
        await ws.write_message(json.dumps({"type": "hb"}))
        if env["type"] == "status" and env["data"]["data"].get("state") == "running":
            break
    return ws


async def hangup(ws):
    """Close our end and read until the socket is gone (its fd too)."""
    ws.close()
    while await asyncio.wait_for(ws.read_message(), 10) is not None:
        pass


async def test_a_dropped_client_stops_its_session_within_the_lease(jp_fetch, jp_ws_fetch):
    info = await create(jp_fetch, {"formats": ["txt"]})
    assert info["source"] == {"kind": "push"}
    sid = info["id"]
    ws = await connect(jp_ws_fetch, sid)
    pcm = pcm16(FIXTURES / "short.wav").tobytes()
    # a client that keeps talking keeps its session, well past the lease
    t = time.monotonic()
    for i in range(0, len(pcm), 3200):
        await ws.write_message(pcm[i:i + 3200], binary=True)
        t_heard = time.monotonic()  # the lease runs from the last message the server heard
        await asyncio.sleep(0.1)
    assert time.monotonic() - t > LEASE * 2
    (lease,) = await leases(jp_fetch)
    assert lease["connected"] and lease["pcm_bytes"] == len(pcm) - len(pcm) % 2 and not lease["expired"]
    pid = json.loads((await jp_fetch("loquilex", "api", "sessions", sid)).body)["pid"]
    await hangup(ws)  # the tab goes away without a stop
    info = await wait_ended(jp_fetch, sid, LEASE + 2.0)
    assert time.monotonic() - t_heard >= LEASE * 0.9  # the lease, not something else, ended it
    assert info["state"] == "stopped"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    (lease,) = await leases(jp_fetch)
    assert lease["expired"] and lease["ended"]


async def test_a_silent_client_is_no_client(jp_fetch, jp_ws_fetch):
    """Connected but never heard from (a half-open socket after a network loss)."""
    sid = (await create(jp_fetch))["id"]
    ws = await connect(jp_ws_fetch, sid)
    try:
        await wait_ended(jp_fetch, sid, LEASE + 2.0)
    finally:
        await hangup(ws)


async def test_heartbeats_alone_keep_it(jp_fetch, jp_ws_fetch):
    sid = (await create(jp_fetch))["id"]
    ws = await connect(jp_ws_fetch, sid)
    for _ in range(int(LEASE * 3 / 0.3)):
        await ws.write_message(json.dumps({"type": "hb"}))
        await asyncio.sleep(0.3)
    assert json.loads((await jp_fetch("loquilex", "api", "sessions", sid)).body)["end"] is None
    await ws.write_message(json.dumps({"type": "stop"}))
    info = await wait_ended(jp_fetch, sid, 15)
    assert info["end"]["kind"] == "clean"
    await hangup(ws)


async def test_a_session_nobody_connects_to_is_stopped(jp_fetch):
    sid = (await create(jp_fetch))["id"]
    # the lease runs from the creation; a worker still loading its model gets the supervisor's
    # startup allowance (10 s) before it is signalled
    await wait_ended(jp_fetch, sid, LEASE + 2.0 + 10.0)
    (lease,) = await leases(jp_fetch)
    assert lease["expired"] and lease["pcm_bytes"] == 0


async def test_bad_bodies_are_refused_and_nothing_starts(jp_fetch):
    for body in ('{"source": {"kind": "file", "path": "x.wav"}}', '{"kernel_id": "k"}', "[1]", '{"bogus": 1}', "{not json"):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("loquilex", "api", "browser-sessions", method="POST", body=body)
        assert err.value.code == 400
        assert json.loads(err.value.response.body)["message"]
    assert json.loads((await jp_fetch("loquilex", "api", "sessions")).body)["sessions"] == []
    assert await leases(jp_fetch) == []


async def test_routes_need_a_token(jp_fetch):
    for method, body in (("GET", None), ("POST", "{}")):
        with pytest.raises(HTTPClientError) as err:
            await jp_fetch("loquilex", "api", "browser-sessions", method=method, body=body, headers={"Authorization": ""})
        assert err.value.code in (401, 403)
