"""The server extension over real HTTP and WebSocket (pytest-jupyter), with real workers."""

import asyncio
import json

import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers import FIXTURES, pcm16
from tests.server.rest import post_session

LOQUILEX = {"heartbeat_interval": 0.5, "replay_window": 2.0, "sweep_interval": 0.5}


async def read_until_eos(ws, timeout=60):
    out = []
    while True:
        msg = await asyncio.wait_for(ws.read_message(), timeout)
        assert msg is not None, "socket closed before eos"
        env = json.loads(msg)
        out.append(env)
        if env["type"] == "eos":
            return out


async def test_file_session_over_rest_and_websocket(jp_serverapp, jp_fetch, jp_ws_fetch, speech):
    info = await post_session(jp_fetch, {"source": {"kind": "file", "path": speech, "realtime": False}})
    sid = info["id"]
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    await ws.write_message(json.dumps({"type": "hello"}))
    welcome = json.loads(await ws.read_message())
    assert welcome["type"] == "welcome" and welcome["data"]["resume_token"]
    envs = await read_until_eos(ws)
    seqs = [e["seq"] for e in envs if e["seq"] is not None]
    assert seqs == sorted(set(seqs))
    # only a partial superseded by a newer one of its segment may be coalesced away
    log = jp_serverapp.web_app.settings["loquilex_manager"].supervisor.get(sid).log
    assert {e.seq for e in log if e.type != "asr.partial"} <= set(seqs)
    finals = [e for e in envs if e["type"] == "asr.final"]
    assert len(finals) >= 5
    assert await ws.read_message() is None  # closed by the server after eos
    r = await jp_fetch("loquilex", "api", "sessions", sid, "captions.vtt")
    assert r.body.decode().startswith("WEBVTT") and finals[0]["data"]["text"] in r.body.decode()
    r = await jp_fetch("loquilex", "api", "sessions", sid)
    assert json.loads(r.body)["end"]["kind"] == "clean"


async def test_push_session_over_websocket(jp_serverapp, jp_fetch, jp_ws_fetch):
    info = await post_session(jp_fetch, {"source": {"kind": "push"}})
    ws = await jp_ws_fetch("loquilex", "api", "sessions", info["id"], "events")
    await ws.write_message(json.dumps({"type": "hello"}))
    samples = pcm16(FIXTURES / "short.wav")
    for i in range(0, len(samples), 3200):
        await ws.write_message(samples[i : i + 3200].tobytes(), binary=True)
    await ws.write_message(json.dumps({"type": "stop"}))
    envs = await read_until_eos(ws)
    assert any(e["type"] == "asr.final" for e in envs)
    ws.close()


async def test_bad_bodies_get_400(jp_serverapp, jp_fetch):
    for body in (
        {"source": {"kind": "file", "path": "../etc/passwd"}},
        {"source": {"kind": "file", "path": "/etc/passwd"}},
        {"source": {"kind": "tape"}},
        {"source": {"kind": "push"}, "model": "/tmp"},
        {"source": {"kind": "push"}, "beam_sise": 2},
        {"source": {"kind": "push"}, "kernel_id": "nope"},
        [1, 2],
    ):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps(body))
        assert e.value.code == 400, body
        assert json.loads(e.value.response.body)["message"]


async def test_unknown_session_websocket_is_refused(jp_serverapp, jp_ws_fetch):
    with pytest.raises(HTTPClientError) as e:
        await jp_ws_fetch("loquilex", "api", "sessions", "nosuch", "events")
    assert e.value.code == 404
    manager = jp_serverapp.web_app.settings["loquilex_manager"]
    assert manager.hub.channels == {}
