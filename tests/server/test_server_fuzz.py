"""Property tests: random WebSocket messages and random POST bodies against the real server.

Hypothesis drives the examples from a worker thread while the server keeps running on the
test's event loop; each example's client calls are scheduled onto that loop. So Hypothesis
generates, runs and shrinks as usual, and a failure reports the minimal message or body.

Properties: the server answers malformed input with an ``error`` envelope or a 4xx (never a
500, never an aborted socket), and well-behaved clients and sessions carry on unharmed.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from loquilex_nb.core.config import ASR_KEYS
from tests.helpers import FIXTURES, pcm16

SHORT = pcm16(FIXTURES / "short.wav")
EXAMPLES = int(os.environ.get("LOQUILEX_FUZZ_EXAMPLES", "60"))  # raise it for a deeper hunt
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ folder in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    print_blob=True,
)
LOQUILEX = {"heartbeat_interval": 0.5, "replay_window": 5.0, "sweep_interval": 0.5,
            "max_sessions": 4, "max_connections": 6, "max_connections_per_session": 4,
            "max_bytes_in_flight": 40000, "hello_timeout": 2.0}


async def run_hypothesis(test_fn):
    """Run a sync Hypothesis test in a thread while this loop keeps serving."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def target():
        try:
            test_fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting test
            loop.call_soon_threadsafe(done.set_exception, exc)
        else:
            loop.call_soon_threadsafe(done.set_result, None)

    thread = threading.Thread(target=target, name="hypothesis-driver")
    thread.start()
    try:
        await done
    finally:
        thread.join()


def assert_every_seq_once(seqs, session, last, first=1):
    """In order, exactly once; only partials replaced by a newer one of their segment may be
    missing (PROTOCOL.md: a queued partial is replaced, latest wins)."""
    assert seqs == sorted(set(seqs)) and set(seqs) <= set(range(first, last + 1)), seqs
    log = {e.seq: e for e in session.log}
    for n in sorted(set(range(first, last + 1)) - set(seqs)):
        assert log[n].type == "asr.partial", f"seq {n} ({log[n].type}) never arrived"
        assert any(s > n and log[s].segment_id == log[n].segment_id for s in seqs), f"partial {n} lost for good"


def on_loop(loop, coro, timeout=60):
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


# -- strategies -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12
)
# ack seqs stay out of (0, the session's seq]: whether those are valid depends on timing
ack_seqs = st.just(0) | st.integers(max_value=-1) | st.integers(min_value=10**9) | json_values.filter(lambda v: not isinstance(v, int) or isinstance(v, bool))
message_types = st.sampled_from(["hb", "ack", "finalize", "hello", "pcm", "welcome", "", "HB"]) | st.text(max_size=12) | json_values
envelopes = st.fixed_dictionaries(
    {"type": message_types}, optional={"seq": ack_seqs, "last_seq": json_values, "resume_token": json_values, "data": json_values}
)
acks = st.fixed_dictionaries({"type": st.just("ack"), "seq": ack_seqs})


def not_stop(text: str) -> bool:
    """`stop` would end the session under test; it is the one message we keep out."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return True
    return not (isinstance(msg, dict) and msg.get("type") == "stop")


text_messages = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    envelopes.map(json.dumps),
    acks.map(json.dumps),
).filter(not_stop)
ws_messages = st.one_of(text_messages, st.binary(max_size=4000))


def expected_reply(message: str | bytes) -> str | None:
    """What docs/PROTOCOL.md says one message after hello draws: an error code, or nothing."""
    if isinstance(message, bytes):
        return "bad-pcm" if len(message) % 2 else None
    try:
        msg = json.loads(message)
        kind = msg["type"]
    except (ValueError, KeyError, TypeError):
        return "bad-message"
    if kind == "hb" or kind == "finalize":
        return None
    if kind == "ack":
        seq = msg.get("seq")
        return None if seq == 0 and type(seq) is int else "bad-ack"
    return "unknown-type"


# -- WebSocket --------------------------------------------------------------------------------


class Conn:
    def __init__(self, ws):
        self.ws = ws
        self.envs = []
        self.ended = False  # read_message() returned None: it would never return again

    @classmethod
    async def open(cls, jp_ws_fetch, sid):
        self = cls(await jp_ws_fetch("loquilex", "api", "sessions", sid, "events"))
        await self.ws.write_message(json.dumps({"type": "hello"}))
        welcome = json.loads(await asyncio.wait_for(self.ws.read_message(), 10))
        assert welcome["type"] == "welcome"
        return self

    async def recv(self, timeout=10):
        msg = await asyncio.wait_for(self.ws.read_message(), timeout)
        self.ended = msg is None
        assert msg is not None, f"socket closed: {self.ws.close_code} {self.ws.close_reason!r}"
        env = json.loads(msg)
        self.envs.append(env)
        return env

    async def aclose(self):
        self.ws.close()
        try:
            while not self.ended:
                self.ended = await asyncio.wait_for(self.ws.read_message(), 10) is None
        except asyncio.TimeoutError:
            pass


async def drain(conn: Conn):
    """Keep reading a well-behaved connection in the background."""
    try:
        while True:
            msg = await conn.ws.read_message()
            if msg is None:
                conn.ended = True
                return
            conn.envs.append(json.loads(msg))
    except asyncio.CancelledError:
        pass


async def test_random_messages_after_hello(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    loop = asyncio.get_running_loop()
    fuzzed = json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"]
    good_sid = json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"]
    bystander = await Conn.open(jp_ws_fetch, fuzzed)  # well-behaved, on the fuzzed session
    watching = asyncio.create_task(drain(bystander))
    seen = {"examples": 0, "codes": set(), "binary": 0}

    async def exchange(messages):
        conn = await Conn.open(jp_ws_fetch, fuzzed)
        try:
            for m in messages:
                await conn.ws.write_message(m, binary=isinstance(m, bytes))
            sentinel = f"sentinel-{uuid.uuid4().hex[:12]}"
            await conn.ws.write_message(json.dumps({"type": sentinel}))
            while True:
                env = await conn.recv()
                if env["type"] == "error" and sentinel in env["data"].get("detail", ""):
                    break
            return [e for e in conn.envs if e["type"] == "error" and e["seq"] is None][:-1], conn.envs
        finally:
            await conn.aclose()

    @FUZZ
    @given(st.lists(ws_messages, min_size=1, max_size=6))
    def property_(messages):
        errors, envs = on_loop(loop, exchange(messages))
        # every envelope is well-formed; protocol errors come one per bad message, in order
        for env in envs:
            assert env["v"] == 1 and env["sid"] == fuzzed and {"type", "seq", "t_wall", "t_mono", "data"} <= set(env)
        expected = [c for c in map(expected_reply, messages) if c is not None]
        assert [e["data"]["code"] for e in errors] == expected
        assert all(isinstance(e["data"]["detail"], str) and e["data"]["detail"] for e in errors)
        seen["examples"] += 1
        seen["codes"].update(expected)
        seen["binary"] += sum(isinstance(m, bytes) for m in messages)

    try:
        await run_hypothesis(property_)
        assert seen["examples"] >= EXAMPLES * 0.8, seen
        assert {"bad-message", "unknown-type", "bad-ack", "bad-pcm"} <= seen["codes"], seen
        assert seen["binary"] > 0

        # the fuzzed session still works end to end for its well-behaved client...
        session = manager.supervisor.get(fuzzed)
        assert session.alive, session.end
        feeder = await Conn.open(jp_ws_fetch, fuzzed)
        for i in range(0, len(SHORT), 3200):
            await feeder.ws.write_message(SHORT[i : i + 3200].tobytes(), binary=True)
        await feeder.ws.write_message(json.dumps({"type": "stop"}))
        await asyncio.wait_for(watching, 60)
        seqs = [e["seq"] for e in bystander.envs if e["seq"] is not None]
        assert bystander.envs[-1]["type"] == "eos"
        assert_every_seq_once(seqs, session, seqs[-1], first=seqs[0])
        assert not [e["data"] for e in bystander.envs if e["type"] == "error"]
        assert bystander.ws.close_code == 1000
        assert bystander.envs[-1]["data"]["data"]["end"]["kind"] == "clean"
        await feeder.aclose()
        # ...and so does an untouched one
        good = await Conn.open(jp_ws_fetch, good_sid)
        for i in range(0, len(SHORT), 3200):
            await good.ws.write_message(SHORT[i : i + 3200].tobytes(), binary=True)
        await good.ws.write_message(json.dumps({"type": "stop"}))
        while (await good.recv(60))["type"] != "eos":
            pass
        assert any(e["type"] == "asr.final" and e["data"]["text"] for e in good.envs)
        await good.aclose()
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await bystander.aclose()


def spec_valid_hello(message) -> bool | None:
    """True: a hello the spec accepts; False: one it refuses; None: not pinned down by the spec."""
    if isinstance(message, bytes):
        return False
    try:
        msg = json.loads(message)
    except (ValueError, RecursionError):
        return False
    if not isinstance(msg, dict) or msg.get("type") != "hello":
        return False
    last_seq, token = msg.get("last_seq", 0), msg.get("resume_token")
    if last_seq is None or last_seq is False or last_seq in ("", [], {}):
        return None  # "optional": absent-like values, either answer is defensible
    ok_seq = type(last_seq) is int and last_seq >= 0
    ok_token = token is None or isinstance(token, str)
    return ok_seq and ok_token


hellos = st.fixed_dictionaries(
    {"type": st.just("hello")}, optional={"last_seq": st.integers(min_value=-3, max_value=10**6) | json_values, "resume_token": json_values}
).map(json.dumps)


async def test_random_first_messages(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    loop = asyncio.get_running_loop()
    sid = json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"]
    seen = {True: 0, False: 0}

    async def first(message):
        ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
        try:
            await ws.write_message(message, binary=isinstance(message, bytes))
            reply = await asyncio.wait_for(ws.read_message(), 10)
            if reply is None:
                return None, ws.close_code, ws.close_reason
            ws.close(1000)
            while await asyncio.wait_for(ws.read_message(), 10) is not None:
                pass
            return json.loads(reply), None, None
        finally:
            ws.close()

    @FUZZ
    @given(st.one_of(hellos, text_messages, st.binary(max_size=64)))
    def property_(message):
        reply, code, reason = on_loop(loop, first(message))
        valid = spec_valid_hello(message)
        if reply is not None:
            assert reply["type"] == "welcome" and valid is not False, (message, reply)
        else:
            assert (code, "hello" in (reason or "")) == (1008, True), (message, code, reason)
            assert valid is not True, message
        seen[reply is not None] += 1

    await run_hypothesis(property_)
    assert seen[True] and seen[False], seen
    assert not manager.hub.channels[sid].connections
    await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


# -- REST -------------------------------------------------------------------------------------

paths = st.sampled_from(["speech.wav", "nope.wav", "../speech.wav", "/etc/passwd", "", ".", "loquilex-captions", "speech.wav/x"]) | st.text(max_size=20)
sources = json_values | st.fixed_dictionaries(
    {"kind": st.sampled_from(["push", "file", "mic", "tape", "PUSH"]) | json_values},
    optional={"path": paths | json_values, "realtime": st.booleans() | json_values, "device": json_values},
)
option_values = json_values | st.sampled_from([1, 2, 0.5, 8.0, "int8", "float32", "en", ["vtt"], "srt,txt", [], ["vtt", "pdf"], -1, 10**6,
                                               10**19, ["vtt", "vtt"], {"vtt": 1}, ".", "a/" * 40, True, "x" * 5000, "/tmp"])
OTHER_KEYS = ["formats", "final_lines", "out", "kernel_id", "model", "owner", "output_root", "sid", "realtime", "source", "beam_sise", "overwrite"]
option_keys = st.sampled_from(sorted(ASR_KEYS) + OTHER_KEYS) | st.text(max_size=8)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.builds(lambda src, opts: json.dumps({"source": src, **opts}), sources, st.dictionaries(option_keys, option_values, max_size=4)),
    st.binary(max_size=200),
    st.text(max_size=100),
)


async def test_random_session_bodies(jp_serverapp, jp_fetch, jp_ws_fetch, speech, manager):
    loop = asyncio.get_running_loop()
    good_sid = json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"]
    good = await Conn.open(jp_ws_fetch, good_sid)
    watching = asyncio.create_task(drain(good))
    seen = {}

    async def post(body):
        try:
            r = await jp_fetch("loquilex", "api", "sessions", method="POST", body=body)
        except HTTPClientError as e:
            return e.code, e.response.body if e.response is not None else b""
        info = json.loads(r.body)
        # whatever got through must be a real, stoppable session
        r2 = await jp_fetch("loquilex", "api", "sessions", info["id"], method="DELETE")
        assert json.loads(r2.body)["end"] is not None
        return r.code, r.body

    @FUZZ
    @given(bodies)
    def property_(body):
        code, raw = on_loop(loop, post(body))
        # 409: an `out` folder that already holds captions (a folder is never shared)
        assert code in (201, 400, 409, 413), (code, raw[:300])
        answer = json.loads(raw)
        if code in (400, 409, 413):
            assert set(answer) == {"error", "message"} and answer["message"], answer
        else:
            assert answer["state"] in ("starting", "running") and answer["pid"]
        seen[code] = seen.get(code, 0) + 1

    try:
        await run_hypothesis(property_)
        assert seen.get(400, 0) >= EXAMPLES * 0.5, seen
        # the bystander session never noticed
        assert manager.supervisor.get(good_sid).alive
        for i in range(0, len(SHORT), 3200):
            await good.ws.write_message(SHORT[i : i + 3200].tobytes(), binary=True)
        await good.ws.write_message(json.dumps({"type": "stop"}))
        await asyncio.wait_for(watching, 60)
        assert good.envs[-1]["type"] == "eos" and good.envs[-1]["data"]["data"]["end"]["kind"] == "clean"
        assert any(e["type"] == "asr.final" and e["data"]["text"] for e in good.envs)
        seqs = [e["seq"] for e in good.envs if e["seq"] is not None]
        assert_every_seq_once(seqs, manager.supervisor.get(good_sid), seqs[-1])
        deadline = time.monotonic() + 10
        while [s for s in manager.supervisor.list() if s.id != good_sid]:
            assert time.monotonic() < deadline, manager.supervisor.list()
            await asyncio.sleep(0.05)
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await good.aclose()


# -- inputs the property tests keep out, pinned down one by one -------------------------------

DEEP = "[" * 5000 + "]" * 5000


async def test_deeply_nested_message_gets_an_error_not_an_abort(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"]
    conn = await Conn.open(jp_ws_fetch, sid)
    try:
        await conn.ws.write_message(DEEP)
        await conn.ws.write_message(json.dumps({"type": "ack", "seq": -1}))
        while (env := await conn.recv())["seq"] is not None:  # skip the session's own events
            pass
        assert env["type"] == "error" and env["data"]["code"] == "bad-message", env
        while (env := await conn.recv())["seq"] is not None:
            pass
        assert env["data"]["code"] == "bad-ack"  # and the socket still works
    finally:
        await conn.aclose()
        await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


async def test_deeply_nested_first_message_closes_1008(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"]
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    try:
        await ws.write_message(DEEP)
        assert await asyncio.wait_for(ws.read_message(), 10) is None
        assert ws.close_code == 1008
    finally:
        ws.close()
        await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


async def test_deeply_nested_body_is_400(jp_serverapp, jp_fetch):
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("loquilex", "api", "sessions", method="POST", body=DEEP)
    assert e.value.code == 400


@pytest.mark.parametrize(
    "body",
    [
        {"source": {"kind": "file", "path": "a" * 300}},
        {"source": {"kind": "push"}, "out": "a" * 300},
        {"source": {"kind": "push"}, "out": "taken/captions.vtt"},
        {"source": {"kind": "push"}, "out": "taken/captions.vtt/sub"},
    ],
    ids=["long-path", "long-out", "out-is-a-file", "out-under-a-file"],
)
async def test_file_system_errors_are_400(jp_serverapp, jp_fetch, manager, body):
    taken = manager.output_root / "taken"
    taken.mkdir(parents=True, exist_ok=True)
    (taken / "captions.vtt").write_text("WEBVTT\n")
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps(body))
    assert e.value.code == 400


# -- limits: random crowds of sockets never get past them -------------------------------------

socket_actions = st.lists(
    st.sampled_from(["open", "open", "hello", "pcm", "close", "pcm-big"]) | st.tuples(st.just("open-other"), st.integers(0, 1)),
    min_size=1, max_size=25,
)


async def test_random_socket_crowds_stay_within_the_limits(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    """Random opens, hellos, audio and closes over two push sessions: at every step the hub
    holds no more sockets than allowed, at most one audio writer per session and no more PCM
    in flight than allowed; refused sockets are closed 1013; the sessions carry on."""
    limits = manager.hub.limits
    loop = asyncio.get_running_loop()
    sids = [json.loads((await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))).body)["id"] for _ in range(2)]
    frame = SHORT[:1600].tobytes()

    async def run(actions):
        socks = []
        try:
            for act in actions:
                if isinstance(act, tuple) or act == "open":
                    sid = sids[act[1]] if isinstance(act, tuple) else sids[0]
                    socks.append([await jp_ws_fetch("loquilex", "api", "sessions", sid, "events"), False])
                elif socks:
                    ws, hello = socks[-1]
                    try:
                        if act == "close":
                            socks.pop()
                            await Conn(ws).aclose()
                        elif act == "hello" and not hello:
                            await ws.write_message(json.dumps({"type": "hello"}))
                            socks[-1][1] = True
                        elif act.startswith("pcm") and hello:
                            await ws.write_message(frame * (20 if act == "pcm-big" else 1), binary=True)
                    except (WebSocketClosedError, StreamClosedError):
                        assert ws.close_code == 1013, (ws.close_code, ws.close_reason)  # refused at open
                await asyncio.sleep(0.01)
                assert sum(len(v) for v in manager.hub.sockets.values()) <= limits.max_connections
                assert all(len(v) <= limits.max_connections_per_session for v in manager.hub.sockets.values())
                assert all(len(ch.writers) <= limits.max_audio_writers for ch in manager.hub.channels.values())
                assert manager.hub.bytes_in_flight <= limits.max_total_bytes_in_flight
            for ws, _ in socks:
                if ws.close_code is not None:
                    assert ws.close_code in (1013, 1008), (ws.close_code, ws.close_reason)
        finally:
            for ws, _ in socks:
                await Conn(ws).aclose()

    @FUZZ
    @given(socket_actions)
    def property_(actions):
        on_loop(loop, run(actions))
        deadline = time.monotonic() + 10
        while on_loop(loop, _count(manager)):
            assert time.monotonic() < deadline, manager.hub.sockets
            time.sleep(0.02)

    await run_hypothesis(property_)
    for sid in sids:
        assert manager.supervisor.get(sid).alive
        await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


async def _count(manager):
    return sum(len(v) for v in manager.hub.sockets.values())
