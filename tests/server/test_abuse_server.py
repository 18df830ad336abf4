"""The server extension against hostile and careless clients (issue 9; validation items of 10).

Real server (pytest-jupyter), real workers, real WebSockets.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest
from jupyter_server.auth.authorizer import Authorizer
from tornado.httpclient import HTTPClientError

from tests.helpers import FIXTURES, server_config, words
from tests.server.test_server_protocol import Client

LOQUILEX = {"heartbeat_interval": 0.5, "replay_window": 5.0, "sweep_interval": 0.3}


class ReadExecuteOnly(Authorizer):
    """A user with `read` and `execute` on loquilex, but not `write`."""

    def is_authorized(self, handler, user, action, resource):
        return resource != "loquilex" or action in ("read", "execute")


@pytest.fixture
def audio(jp_root_dir):
    shutil.copy(FIXTURES / "short.wav", jp_root_dir / "short.wav")
    shutil.copy(FIXTURES / "corrupt.wav", jp_root_dir / "corrupt.wav")
    (jp_root_dir / "notes.txt").write_text("not audio at all\n" * 100)
    return jp_root_dir


async def post(jp_fetch, body, raw=None):
    """(status, answer) for a POST, whatever the status."""
    try:
        r = await jp_fetch("loquilex", "api", "sessions", method="POST", body=raw if raw is not None else json.dumps(body))
    except HTTPClientError as e:
        return e.code, json.loads(e.response.body)
    return r.code, json.loads(r.body)


async def delete(jp_fetch, sid):
    return json.loads((await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")).body)


def folders(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir()) if root.exists() else []


# -- item 9 and 2: every bad value is a 400 before any process or folder ----------------------


BAD = {
    "final_lines-huge": {"final_lines": 10**19},
    "final_lines-zero": {"final_lines": 0},
    "out-deep": {"out": "/".join(["d"] * 1500)},
    "formats-dict": {"formats": {"vtt": 1}},
    "formats-dup": {"formats": ["vtt", "vtt"]},
    "formats-number": {"formats": [1]},
    "language-long": {"language": "x" * 10_000},
    "language-unknown": {"language": "xx"},
    "realtime-string": {"realtime": "no"},
    "overwrite-string": {"overwrite": "yes"},
}


async def test_bad_values_are_400_before_any_process_or_folder(jp_fetch, manager):
    for name, options in BAD.items():
        code, answer = await post(jp_fetch, {"source": {"kind": "push"}, **options})
        assert code == 400, (name, answer)
        assert answer["message"] and len(answer["message"]) < 2000, name
    code, answer = await post(jp_fetch, None, raw=json.dumps({"source": {"kind": "push"}, "language": "x" * 1_000_000}))
    assert code == 413 and "bytes" in answer["message"]
    assert manager.supervisor.list(include_ended=True) == []
    assert folders(manager.output_root) == []


async def test_undecodable_files_are_400_with_a_plain_message(jp_fetch, manager, audio):
    for name in ("notes.txt", "corrupt.wav"):
        code, answer = await post(jp_fetch, {"source": {"kind": "file", "path": name}})
        assert code == 400, answer
        assert name in answer["message"] and "Errno" not in answer["message"], answer
    assert manager.supervisor.list(include_ended=True) == []
    assert folders(manager.output_root) == []


async def test_top_level_realtime_is_an_option(jp_fetch, manager, audio):
    code, info = await post(jp_fetch, {"source": {"kind": "file", "path": "short.wav"}, "realtime": False})
    assert code == 201 and info["source"]["realtime"] is False, info
    await delete(jp_fetch, info["id"])
    code, answer = await post(jp_fetch, {"source": {"kind": "file", "path": "short.wav", "realtime": True}, "realtime": False})
    assert code == 400 and "realtime" in answer["message"]


async def test_unknown_option_lists_exactly_the_client_options(jp_fetch):
    from loquilex_nb.core.config import option_names

    code, answer = await post(jp_fetch, {"source": {"kind": "push"}, "beam_sise": 2})
    assert code == 400
    listed = answer["message"].split("known: ")[1].split("; and ")[0].split(", ")
    assert listed == option_names(server=True)
    assert {"formats", "final_lines", "out", "realtime"} <= set(listed) and "model" not in listed


# -- item 10 (a): what the server returns can be sent back ------------------------------------


async def test_returned_paths_round_trip(jp_fetch, manager, audio):
    absolute = str(audio / "short.wav")
    code, first = await post(jp_fetch, {"source": {"kind": "file", "path": absolute, "realtime": False}})
    assert code == 201, first
    code, second = await post(jp_fetch, {"source": {"kind": "file", "path": first["source"]["path"], "realtime": False}})
    assert code == 201, second
    assert second["source"]["path"] == first["source"]["path"]
    code, answer = await post(jp_fetch, {"source": {"kind": "file", "path": "/etc/passwd"}})
    assert code == 400
    # the returned folder is taken while its session runs ...
    code, answer = await post(jp_fetch, {"source": {"kind": "push"}, "out": first["out_dir"]})
    assert code == 409 and first["id"] in answer["message"], answer
    ended = await delete(jp_fetch, first["id"])
    await delete(jp_fetch, second["id"])
    assert ended["end"] is not None
    # ... and after it, it holds captions: only an explicit overwrite reuses it
    code, answer = await post(jp_fetch, {"source": {"kind": "push"}, "out": first["out_dir"]})
    assert code == 409 and "overwrite" in answer["message"], answer
    code, info = await post(jp_fetch, {"source": {"kind": "push"}, "out": first["out_dir"], "overwrite": True})
    assert code == 201 and info["out_dir"] == first["out_dir"]
    await delete(jp_fetch, info["id"])


# -- item 5 / 10 (d): sessions never share a folder -------------------------------------------


async def test_output_folders_do_not_collide(jp_fetch, manager):
    code, a = await post(jp_fetch, {"source": {"kind": "push"}, "out": "talk"})
    assert code == 201
    for out in ("talk", "talk/", "./talk"):
        code, answer = await post(jp_fetch, {"source": {"kind": "push"}, "out": out})
        assert code == 409, (out, answer)
    code, b = await post(jp_fetch, {"source": {"kind": "push"}, "out": "."})
    assert code == 201
    code, answer = await post(jp_fetch, {"source": {"kind": "push"}, "out": "."})
    assert code == 409
    code, answer = await post(jp_fetch, {"source": {"kind": "push"}, "out": b["id"]})
    assert code == 201  # another session's id is just a name; b writes to "."
    await asyncio.gather(delete(jp_fetch, a["id"]), delete(jp_fetch, b["id"]), delete(jp_fetch, answer["id"]))


# -- item 8: admitted before any folder exists ------------------------------------------------


@server_config(max_sessions=2)
async def test_refused_posts_leave_no_folders(jp_fetch, manager):
    live = [(await post(jp_fetch, {"source": {"kind": "push"}}))[1]["id"] for _ in range(2)]
    before = folders(manager.output_root)
    results = await asyncio.gather(*(post(jp_fetch, {"source": {"kind": "push"}, "out": f"x\ny{i}" if i % 2 else f"n{i}/deep"}) for i in range(30)))
    assert {code for code, _ in results} <= {400, 429}, results
    assert folders(manager.output_root) == before
    await asyncio.gather(*(delete(jp_fetch, sid) for sid in live))


# -- item 10 (c): JSON errors on every route of ours ------------------------------------------


async def test_every_route_of_ours_answers_json_errors(jp_fetch):
    code, info = await post(jp_fetch, {"source": {"kind": "push"}})
    for path in (("sessions", info["id"], "captions.foo"), ("sessions", info["id"], "nope"), ("nope",), ("sessions", "x" * 65)):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("loquilex", "api", *path)
        assert e.value.code == 404, path
        assert e.value.response.headers["Content-Type"].startswith("application/json"), path
        assert json.loads(e.value.response.body)["error"] == "http-404"
    await delete(jp_fetch, info["id"])


# -- item 3: the file is opened once, confined --------------------------------------------------


async def test_symlink_swapped_in_after_the_post_is_not_followed(jp_fetch, manager, audio, tmp_path):
    outside = tmp_path / "outside.wav"
    shutil.copy(FIXTURES / "speech.wav", outside)
    code, info = await post(jp_fetch, {"source": {"kind": "file", "path": "short.wav", "realtime": False}})
    assert code == 201
    (audio / "short.wav").unlink()
    (audio / "short.wav").symlink_to(outside)  # long before the worker has loaded its model
    session = manager.supervisor.get(info["id"])
    assert (await session.wait(60)).kind == "clean"
    heard = " ".join(e.text for e in session.finals)
    assert set(words(heard)) & set(words((FIXTURES / "short.txt").read_text()))
    outside_only = set(words((FIXTURES / "speech.txt").read_text())) - set(words((FIXTURES / "short.txt").read_text()))
    assert len(set(words(heard)) & outside_only) <= 1, heard
    code, answer = await post(jp_fetch, {"source": {"kind": "file", "path": "short.wav"}})
    assert code == 400  # the symlink itself leads outside


# -- item 4: connection and writer limits -------------------------------------------------------


@server_config(max_connections_per_session=3, max_connections=4)
async def test_connection_limits_per_session_and_in_total(jp_fetch, jp_ws_fetch, manager):
    a = (await post(jp_fetch, {"source": {"kind": "push"}}))[1]["id"]
    b = (await post(jp_fetch, {"source": {"kind": "push"}}))[1]["id"]
    kept = [await jp_ws_fetch("loquilex", "api", "sessions", a, "events") for _ in range(3)]
    refused = await jp_ws_fetch("loquilex", "api", "sessions", a, "events")
    assert await asyncio.wait_for(refused.read_message(), 10) is None
    assert refused.close_code == 1013 and "this session" in refused.close_reason
    kept.append(await jp_ws_fetch("loquilex", "api", "sessions", b, "events"))
    refused2 = await jp_ws_fetch("loquilex", "api", "sessions", b, "events")
    assert await asyncio.wait_for(refused2.read_message(), 10) is None
    assert refused2.close_code == 1013 and "in all" in refused2.close_reason
    assert sum(len(s) for s in manager.hub.sockets.values()) == 4
    for ws in kept:
        ws.close()
    deadline = time.monotonic() + 10
    while manager.hub.sockets:
        assert time.monotonic() < deadline, manager.hub.sockets
        await asyncio.sleep(0.05)
    await asyncio.gather(delete(jp_fetch, a), delete(jp_fetch, b))


async def test_one_audio_writer_per_push_session(jp_fetch, jp_ws_fetch, manager):
    sid = (await post(jp_fetch, {"source": {"kind": "push"}}))[1]["id"]
    first = await Client.connect(jp_ws_fetch, sid)
    second = await Client.connect(jp_ws_fetch, sid)
    await first.send(bytes(3200))
    await second.send(bytes(3200))
    err = await second.until(lambda e: e["type"] == "error" and e["seq"] is None)
    assert err["data"]["code"] == "writer-busy"
    await first.send(bytes(3200))
    await first.send({"type": "stop"})
    eos = await first.until_eos()
    assert eos["data"]["data"]["end"]["kind"] == "clean"
    assert not [e for e in first.envs if e["type"] == "error" and e["seq"] is None]
    for c in (first, second):  # both are closed by the server after eos
        while await asyncio.wait_for(c.ws.read_message(), 30) is not None:
            pass


# -- item 7: hello-less sockets -----------------------------------------------------------------


@server_config(hello_timeout=0.5)
async def test_a_socket_without_hello_is_timed_out(jp_fetch, jp_ws_fetch, manager):
    sid = (await post(jp_fetch, {"source": {"kind": "push"}}))[1]["id"]
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    started = time.monotonic()
    assert await asyncio.wait_for(ws.read_message(), 10) is None
    assert ws.close_code == 1008 and "hello" in ws.close_reason
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while manager.hub.sockets:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await delete(jp_fetch, sid)


async def test_shutdown_closes_hello_less_sockets_with_1001(jp_fetch, jp_ws_fetch, manager):
    sid = (await post(jp_fetch, {"source": {"kind": "push"}}))[1]["id"]
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    await asyncio.sleep(0.2)
    await manager.shutdown(10)
    assert await asyncio.wait_for(ws.read_message(), 10) is None
    assert ws.close_code == 1001


# -- item 6: each WebSocket message needs its REST twin's action ---------------------------------


@server_config(authorizer_class=ReadExecuteOnly)
async def test_websocket_messages_need_the_same_action_as_rest(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    from loquilex_nb.core.config import build_config
    from loquilex_nb.core.sources import PushSource

    # the user cannot POST (write), so the session is made directly
    config = build_config(PushSource(), sid="s1", output_root=manager.output_root)
    session = await manager.supervisor.create(config, sid="s1")
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("loquilex", "api", "sessions", "s1", method="DELETE")
    assert e.value.code == 403
    c = await Client.connect(jp_ws_fetch, "s1")  # reading is allowed
    for msg in (bytes(3200), {"type": "finalize"}, {"type": "stop"}):
        await c.send(msg)
    await c.send({"type": "ack", "seq": -1})
    await c.until(lambda e: e["type"] == "error" and e["data"]["code"] == "bad-ack")
    codes = [e["data"]["code"] for e in c.errors()]
    assert codes == ["forbidden", "forbidden", "forbidden", "bad-ack"], codes
    await asyncio.sleep(0.5)
    assert session.alive and session.state != "stopping"
    await c.aclose()
    await session.close()
