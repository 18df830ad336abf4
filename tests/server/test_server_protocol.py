"""The loquilex server protocol (docs/PROTOCOL.md) against a real server with real workers.

Auth on every route, origin checks, resume within / past the replay window, flow control
(4008 for a client that stopped reading), malformed and too-frequent messages, state cleanup,
and the REST surface. Push sessions are fed by the test itself, so timing is deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import struct
import time
from contextlib import asynccontextmanager

import pytest
import tornado.websocket
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.web import RequestHandler
from tornado.websocket import WebSocketHandler

from tests.helpers import FIXTURES, gone, pcm16, server_config
from tests.server.rest import post_session

LOQUILEX = {"heartbeat_interval": 0.5, "replay_window": 30.0, "sweep_interval": 0.3}
SPEECH = pcm16(FIXTURES / "speech.wav")
SHORT = pcm16(FIXTURES / "short.wav")
CHUNK = 3200  # 0.2 s of 16 kHz audio


# -- small client helpers ---------------------------------------------------------------------


class Client:
    """A tornado WebSocket client that keeps every envelope it read."""

    def __init__(self, ws):
        self.ws = ws
        self.envs: list[dict] = []
        self.welcome: dict | None = None
        self.ended = False  # read_message() returned None: it would never return again

    @classmethod
    async def connect(cls, jp_ws_fetch, sid, **hello):
        self = cls(await jp_ws_fetch("loquilex", "api", "sessions", sid, "events"))
        await self.send({"type": "hello", **hello})
        self.welcome = await self.recv()
        assert self.welcome is not None and self.welcome["type"] == "welcome", self.welcome
        return self

    async def send(self, msg):
        await self.ws.write_message(json.dumps(msg) if isinstance(msg, dict) else msg, binary=isinstance(msg, bytes))

    async def recv(self, timeout=30.0):
        msg = await asyncio.wait_for(self.ws.read_message(), timeout)
        if msg is None:
            self.ended = True
            return None
        env = json.loads(msg)
        if env["type"] != "welcome":
            self.envs.append(env)
        return env

    async def until(self, pred, timeout=60.0):
        deadline = time.monotonic() + timeout
        while True:
            env = await self.recv(max(0.01, deadline - time.monotonic()))
            assert env is not None, f"socket closed ({self.ws.close_code}) before the awaited message"
            if pred(env):
                return env

    async def until_eos(self, timeout=60.0):
        return await self.until(lambda e: e["type"] == "eos", timeout)

    async def closed(self, timeout=30.0):
        """Read until the server closes; returns (close_code, close_reason)."""
        deadline = time.monotonic() + timeout
        while not self.ended:
            await self.recv(max(0.01, deadline - time.monotonic()))
        return self.ws.close_code, self.ws.close_reason

    def errors(self):
        return [e for e in self.envs if e["type"] == "error" and e["seq"] is None]

    @property
    def seqs(self):
        return [e["seq"] for e in self.envs if e["seq"] is not None]

    @property
    def last_seq(self):
        return max(self.seqs, default=0)

    def drop(self):
        """Cut the TCP connection without a close frame, as a network failure would."""
        self.ws.protocol.stream.close()

    def close(self):
        self.ws.close()

    async def aclose(self, timeout=10.0):
        """Close and wait until the socket is really gone (also on a failing test's way out)."""
        self.ws.close()
        try:
            while not self.ended:
                await self.recv(timeout)
        except asyncio.TimeoutError:
            pass


async def feed(client, samples, chunk=CHUNK, pace=0.0):
    for i in range(0, len(samples), chunk):
        await client.send(samples[i : i + chunk].tobytes())
        if pace:
            await asyncio.sleep(pace)


@asynccontextmanager
async def beating(client, interval=0.2):
    """A client that keeps saying hb for the whole block, even while it awaits something."""

    async def beat():
        while True:
            try:
                await client.send({"type": "hb"})
            except Exception:
                return  # closed (after eos): nothing left to keep alive
            await asyncio.sleep(interval)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def assert_every_seq_once(seqs, session, last, first=1):
    """Seqs first..last arrived in order and exactly once -- except partials that a newer
    partial of the same segment replaced in a send queue, which PROTOCOL.md allows (latest
    wins); those must have a received successor of their segment."""
    assert seqs == sorted(seqs), f"out of order: {seqs}"
    assert len(set(seqs)) == len(seqs), f"duplicated {sorted({s for s in seqs if seqs.count(s) > 1})}"
    assert set(seqs) <= set(range(first, last + 1)), (first, last, seqs)
    log = {e.seq: e for e in session.log}
    assert all(n in log for n in range(first, last + 1)), "the session log no longer holds these seqs"
    for n in sorted(set(range(first, last + 1)) - set(seqs)):
        ev = log[n]
        assert ev.type == "asr.partial", f"seq {n} ({ev.type}) never arrived"
        assert any(s > n and log[s].segment_id == ev.segment_id for s in seqs), f"partial {n} lost without a newer one of its segment"


# -- auth and origin --------------------------------------------------------------------------


def loquilex_rules(web_app):
    """Every (regex, handler class, matcher) the running app routes under loquilex."""
    found = []

    def walk(router):
        for rule in router.rules:
            if hasattr(rule.target, "rules"):
                walk(rule.target)
                continue
            regex = getattr(rule.matcher, "regex", None)
            if regex is not None and "loquilex" in regex.pattern:
                found.append((regex, rule.target, rule.matcher))

    walk(web_app.wildcard_router)
    walk(web_app.default_router)
    unique = {}
    for regex, target, matcher in found:
        unique.setdefault(regex.pattern, (regex, target, matcher))
    return list(unique.values())


def concrete_path(regex, samples):
    """The route's pattern with each named group replaced by a sample value (checked to match)."""
    pattern, out, i = regex.pattern, [], 0
    while i < len(pattern):
        if pattern.startswith("(?P<", i):
            name = pattern[i + 4 : pattern.index(">", i)]
            assert name in samples, f"route {pattern} has a group {name!r} this test has no sample value for"
            depth, j = 0, i
            while True:  # skip to the group's closing parenthesis
                if pattern[j] == "\\":
                    j += 2
                    continue
                depth += {"(": 1, ")": -1}.get(pattern[j], 0)
                j += 1
                if depth == 0:
                    break
            out.append(samples[name])
            i = j
        elif pattern[i] == "\\":
            out.append(pattern[i + 1])
            i += 2
        elif pattern[i] in "^$":
            i += 1
        else:
            assert pattern[i] not in "()[]*+?|{}", f"route {pattern} is not a simple pattern"
            out.append(pattern[i])
            i += 1
    path = "".join(out)
    assert regex.fullmatch(path), (pattern, path)
    return path


def http_methods(cls):
    return [m.upper() for m in ("get", "post", "put", "patch", "delete") if getattr(cls, m) is not getattr(RequestHandler, m)]


async def test_every_route_refuses_a_caller_without_token(jp_serverapp, jp_http_port, jp_fetch, jp_ws_fetch, manager):
    info = await post_session(jp_fetch, {"source": {"kind": "push"}})
    sid = info["id"]
    rules = loquilex_rules(jp_serverapp.web_app)
    assert len(rules) >= 6, [r[0].pattern for r in rules]
    client = AsyncHTTPClient(force_instance=True)
    tried = []
    try:
        for regex, cls, matcher in rules:
            path = concrete_path(regex, {"sid": sid, "fmt": "vtt", "rest": "nope"})
            url = f"http://127.0.0.1:{jp_http_port}{path}"
            if issubclass(cls, WebSocketHandler):
                for headers in ({}, {"Authorization": ""}, {"Authorization": "token wrong"}):
                    with pytest.raises(HTTPClientError) as e:
                        ws = await tornado.websocket.websocket_connect(HTTPRequest(url.replace("http", "ws", 1), headers=headers))
                        ws.close()
                    assert e.value.code in (401, 403), (path, headers, e.value.code)
                    tried.append(("WS", path))
                continue
            methods = http_methods(cls)
            assert methods, cls
            for method in methods:
                for headers in ({}, {"Authorization": ""}, {"Authorization": "token wrong"}):
                    body = json.dumps({"source": {"kind": "push"}}) if method in ("POST", "PUT", "PATCH") else None
                    r = await client.fetch(url, method=method, headers=headers, body=body, raise_error=False, follow_redirects=False)
                    assert r.code in (401, 403), (method, path, headers, r.code, r.body[:200])
                    tried.append((method, path))
    finally:
        client.close()
    kinds = {m for m, _ in tried}
    assert {"GET", "POST", "DELETE", "WS"} <= kinds, tried
    # nothing happened behind the refusals: still one session, still running
    sessions = manager.supervisor.list(include_ended=True)
    assert [s.id for s in sessions] == [sid] and sessions[0].alive
    # and the same requests with the token work (positive control for a GET and the socket)
    r = await jp_fetch("loquilex", "api", "sessions", sid)
    assert json.loads(r.body)["id"] == sid
    c = await Client.connect(jp_ws_fetch, sid)
    await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")
    await c.until_eos()
    assert await c.closed() == (1000, "session ended")


async def test_websocket_origin_is_checked(jp_serverapp, jp_http_port, jp_base_url, jp_fetch):
    """Origins matter for cookie-authenticated (browser) sockets; jupyter_server skips the check
    for token-authenticated requests by design (no ambient credential, so no CSRF)."""
    info = await post_session(jp_fetch, {"source": {"kind": "push"}})
    r = await jp_fetch("loquilex", "api", "resources")  # token-authenticated: sets the login cookie
    cookies = [c.split(";", 1)[0] for c in r.headers.get_list("Set-Cookie") if c.startswith("username-")]
    assert cookies, r.headers.get_list("Set-Cookie")
    cookie = {"Cookie": "; ".join(cookies)}
    url = f"ws://127.0.0.1:{jp_http_port}{jp_base_url}loquilex/api/sessions/{info['id']}/events"
    for origin in ("http://evil.example", f"http://evil.example:{jp_http_port}", f"http://localhost:{jp_http_port + 1}", "null"):
        with pytest.raises(HTTPClientError) as e:
            ws = await tornado.websocket.websocket_connect(HTTPRequest(url, headers={**cookie, "Origin": origin}))
            ws.close()
        assert e.value.code == 403, origin
    manager = jp_serverapp.web_app.settings["loquilex_manager"]
    assert manager.hub.channels == {}  # refused before any state
    for origin in (f"http://127.0.0.1:{jp_http_port}", None):
        headers = {**cookie, **({"Origin": origin} if origin else {})}
        c = Client(await tornado.websocket.websocket_connect(HTTPRequest(url, headers=headers)))
        await c.send({"type": "hello"})
        assert (await c.recv())["type"] == "welcome", origin
        await c.aclose()
    # a forged cookie is no credential
    with pytest.raises(HTTPClientError) as e:
        ws = await tornado.websocket.websocket_connect(HTTPRequest(url, headers={"Cookie": cookies[0][:-4] + "AAAA"}))
        ws.close()
    assert e.value.code == 403
    await jp_fetch("loquilex", "api", "sessions", info["id"], method="DELETE")


# -- resume -----------------------------------------------------------------------------------


async def test_resume_within_window_loses_and_duplicates_nothing(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    session = manager.supervisor.get(sid)
    feeder = await Client.connect(jp_ws_fetch, sid)
    a = await Client.connect(jp_ws_fetch, sid)
    token = a.welcome["data"]["resume_token"]
    half = len(SPEECH) // 2
    await feed(feeder, SPEECH[:half])
    await a.until(lambda e: e["type"] == "asr.final" and sum(x["type"] == "asr.final" for x in a.envs) >= 2)
    a.drop()  # mid-stream: the worker is still decoding the first half
    dropped_at = a.last_seq
    await wait_for(lambda: all(c.token != token for c in manager.hub.channels[sid].connections), 5, "the server to see the drop")
    feeding = asyncio.create_task(feed(feeder, SPEECH[half:]))
    await wait_for(lambda: session.seq >= dropped_at + 3, 30, "events while disconnected")
    b = await Client.connect(jp_ws_fetch, sid, last_seq=dropped_at, resume_token=token)
    await feeding
    await feeder.send({"type": "stop"})
    eos = await b.until_eos()
    assert not any(e["type"] == "gap" for e in b.envs)
    assert b.envs[0]["seq"] == dropped_at + 1  # the replay starts right after what a read
    assert_every_seq_once(a.seqs + b.seqs, session, eos["seq"])
    assert set(a.seqs) & set(b.seqs) == set()
    assert sum(e["type"] == "asr.final" for e in b.envs) >= 2  # finals produced while away were replayed
    assert await b.closed() == (1000, "session ended")
    assert await feeder.closed() == (1000, "session ended")


async def test_resume_before_the_server_noticed_the_drop(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    session = manager.supervisor.get(sid)
    feeder = await Client.connect(jp_ws_fetch, sid)
    a = await Client.connect(jp_ws_fetch, sid)
    token = a.welcome["data"]["resume_token"]
    await feed(feeder, SPEECH[: len(SPEECH) // 2])
    await a.until(lambda e: e["type"] == "asr.final")
    last_seq = a.last_seq
    # the client gives up on `a` (say its network path died silently) but the server's side of
    # that socket is still open, as it is until TCP or the ping timeout notices
    await wait_for(lambda: session.seq >= last_seq + 2, 30, "events the client missed")
    b = await Client.connect(jp_ws_fetch, sid, last_seq=last_seq, resume_token=token)
    try:
        await feeder.send({"type": "stop"})
        eos = await b.until_eos()
        assert not any(e["type"] == "gap" for e in b.envs), [e for e in b.envs if e["type"] == "gap"]
        assert_every_seq_once(a.seqs[: a.seqs.index(last_seq) + 1] + b.seqs, session, eos["seq"])
    finally:
        for c in (a, b, feeder):
            await c.aclose()


@server_config(replay_window=1.0)
async def test_resume_past_window_gets_gap_with_snapshot(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    session = manager.supervisor.get(sid)
    feeder = await Client.connect(jp_ws_fetch, sid)
    a = await Client.connect(jp_ws_fetch, sid)
    token = a.welcome["data"]["resume_token"]
    third = len(SPEECH) // 3
    await feed(feeder, SPEECH[:third])
    await a.until(lambda e: e["type"] == "asr.final")
    a.drop()
    last_seq = a.last_seq
    await wait_for(lambda: all(c.token != token for c in manager.hub.channels[sid].connections), 5, "the server to see the drop")
    await feed(feeder, SPEECH[third : 2 * third])
    await wait_for(lambda: len(session.finals) >= 3 and session.seq > last_seq + 1, 30, "events while disconnected")
    await asyncio.sleep(1.0 + 0.3)  # past the replay window, measured from the server's detach
    b = await Client.connect(jp_ws_fetch, sid, last_seq=last_seq, resume_token=token)
    gap = await b.recv()
    assert gap["type"] == "gap" and gap["seq"] is None, gap
    to_seq = gap["data"]["to_seq"]
    assert gap["data"]["from_seq"] == last_seq + 1
    assert to_seq >= b.welcome["data"]["session"]["last_seq"] and to_seq > last_seq
    snap = gap["data"]["snapshot"]
    assert snap["state"] == "running"
    # the feeder saw everything: the snapshot holds every final up to to_seq
    await feeder.until(lambda e: e["seq"] is not None and e["seq"] >= to_seq)
    expected = [e for e in feeder.envs if e["type"] == "asr.final" and e["seq"] <= to_seq]
    assert [(f["seq"], f["data"]["text"]) for f in snap["finals"]] == [(e["seq"], e["data"]["text"]) for e in expected]
    assert len(snap["finals"]) >= 3
    # then live events continue right after to_seq
    await feed(feeder, SPEECH[2 * third :])
    await feeder.send({"type": "stop"})
    eos = await b.until_eos()
    assert_every_seq_once(b.seqs, session, eos["seq"], first=to_seq + 1)
    assert any(e["type"] == "asr.final" for e in b.envs)
    assert await b.closed() == (1000, "session ended")
    await feeder.until_eos()
    assert await feeder.closed() == (1000, "session ended")


@server_config(replay_capacity=5)
async def test_late_joiner_past_the_log_capacity_gets_a_gap_then_the_log(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    feeder = await Client.connect(jp_ws_fetch, sid)
    await feed(feeder, SPEECH[: len(SPEECH) // 3])
    await feeder.until(lambda e: e["type"] == "asr.final")
    await feeder.send({"type": "stop"})
    eos = await feeder.until_eos()
    assert eos["seq"] > 5 + 3
    late = await Client.connect(jp_ws_fetch, sid)  # last_seq 0, after the end
    assert late.welcome["data"]["session"]["end"] is not None
    gap = await late.recv()
    assert gap["type"] == "gap" and gap["data"]["from_seq"] == 1 and gap["data"]["to_seq"] == eos["seq"] - 5
    assert gap["data"]["snapshot"]["state"] == "stopped"
    finals = [e for e in feeder.envs if e["type"] == "asr.final"]
    assert [f["seq"] for f in gap["data"]["snapshot"]["finals"]] == [f["seq"] for f in finals]
    await late.until_eos()
    # heartbeats (no seq) may come any time the loop is slow; they are nobody's log
    replayed = [e for e in late.envs[1:] if e["seq"] is not None]
    assert [e["seq"] for e in replayed] == list(range(eos["seq"] - 4, eos["seq"] + 1))
    assert replayed == [e for e in feeder.envs if e["seq"] is not None][-5:]  # the very same envelopes
    assert await late.closed() == (1000, "session ended")
    assert await feeder.closed() == (1000, "session ended")


# -- heartbeats -------------------------------------------------------------------------------


@server_config(heartbeat_interval=0.2, heartbeat_timeout=1.0)
async def test_heartbeats_and_the_silent_client_timeout(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    silent = await Client.connect(jp_ws_fetch, sid)
    chatty = await Client.connect(jp_ws_fetch, sid)
    assert silent.welcome["data"]["hb_interval"] == 0.2 and silent.welcome["data"]["hb_timeout"] == 1.0

    async with beating(chatty, 0.25):  # until eos: finalizing can outlast the 1 s timeout
        started = time.monotonic()
        code = await silent.closed(timeout=10)
        took = time.monotonic() - started
        assert code == (4009, "heartbeat timeout")
        assert 0.9 <= took <= 5.0, took
        hbs = [e for e in silent.envs if e["type"] == "hb"]
        assert len(hbs) >= 3 and all(e["seq"] is None and set(e["data"]) == {"queue_depth", "dropped"} for e in hbs)
        await asyncio.sleep(1.0)  # the talking client outlives the timeout (the bound under test)
        assert chatty.ws.close_code is None
        await chatty.until(lambda e: e["type"] == "hb")
        await chatty.send({"type": "stop"})
        await chatty.until_eos()
    assert await chatty.closed() == (1000, "session ended")


@server_config(heartbeat_interval=2.0, heartbeat_timeout=1.0)  # events come far more often than 2 s
async def test_silent_client_times_out_while_events_flow(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    session = manager.supervisor.get(sid)
    feeder = await Client.connect(jp_ws_fetch, sid)
    silent = await Client.connect(jp_ws_fetch, sid)
    (conn,) = [c for c in manager.hub.channels[sid].connections if c.token == silent.welcome["data"]["resume_token"]]

    async def keep_feeding():  # events every ~0.2 s for as long as the test needs
        while True:
            await feed(feeder, SPEECH[: 16000 * 4], pace=0.01)
            await asyncio.sleep(0.2)

    async with beating(feeder):  # never silent itself, not even while it waits for eos
        feeding = asyncio.create_task(keep_feeding())
        try:
            connected = time.monotonic()
            await wait_for(lambda: conn.closed or time.monotonic() - connected > 4.0, 5, "")
            assert session.alive
            assert conn.closed, "a client silent for 4 s (timeout 1 s) is still connected"
            assert await silent.closed() == (4009, "heartbeat timeout")
        finally:
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            await feeder.send({"type": "stop"})
            await feeder.until_eos()
        await feeder.aclose()
        await silent.aclose()


# -- flow control -----------------------------------------------------------------------------


class RawSocketClient:
    """A WebSocket client on a bare non-blocking socket with a tiny receive buffer, so that
    "stops reading" really stops the TCP stream (tornado's own client keeps reading)."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    @classmethod
    async def connect(cls, port, path, headers, rcvbuf=1):  # the kernel rounds up to its minimum
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        sock.setblocking(False)
        self = cls(sock)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
            key = base64.b64encode(os.urandom(16)).decode()
            lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                     f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode())
            while b"\r\n\r\n" not in self.buf:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                assert chunk, "server closed during the handshake"
                self.buf += chunk
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 101"), head
        except BaseException:
            sock.close()
            raise
        return self

    async def send_text(self, text, opcode=0x1):
        payload = text.encode() if isinstance(text, str) else text
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await asyncio.get_running_loop().sock_sendall(self.sock, head + mask + masked)

    async def frame(self, timeout=10.0):
        """The next (opcode, payload) from the server, or None at EOF."""
        loop = asyncio.get_running_loop()

        async def need(n):
            while len(self.buf) < n:
                chunk = await asyncio.wait_for(loop.sock_recv(self.sock, 65536), timeout)
                if not chunk:
                    return False
                self.buf += chunk
            return True

        if not await need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        n, off = b1 & 0x7F, 2
        if n == 126:
            await need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            await need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        if not await need(off + n):
            return None
        payload, self.buf = self.buf[off : off + n], self.buf[off + n :]
        return b0 & 0x0F, payload

    def close(self):
        self.sock.close()


@server_config(send_queue_limit=5)
async def test_slow_client_is_cut_off_while_a_fast_one_gets_everything(jp_serverapp, jp_fetch, jp_ws_fetch, jp_http_port, jp_base_url, jp_auth_header, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    fast = await Client.connect(jp_ws_fetch, sid)
    slow = await RawSocketClient.connect(jp_http_port, f"{jp_base_url}loquilex/api/sessions/{sid}/events", jp_auth_header)
    try:
        await slow.send_text(json.dumps({"type": "hello"}))
        opcode, payload = await slow.frame()
        welcome = json.loads(payload)
        assert opcode == 0x1 and welcome["type"] == "welcome"
        assert welcome["data"]["limits"]["send_queue_limit"] == 5
        (conn,) = [c for c in manager.hub.channels[sid].connections if c.token == welcome["data"]["resume_token"]]
        # a slow network path: the server's kernel send buffer for this socket holds little
        # (loopback would otherwise buffer megabytes before the server ever saw back-pressure)
        handler = conn._send_text.__self__
        handler.ws_connection.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)  # the minimum
        # from here on the slow client reads nothing until the server has given up on it

        async def feed_and_stop():
            for _ in range(4):  # about 6 kB of events per pass; a pass or two fills the path
                await feed(fast, SPEECH)
                deadline = time.monotonic() + 1.5
                while not conn.closed and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if conn.closed:
                    break
            await feed(fast, SPEECH[: len(SPEECH) // 4])  # more events after the cut
            await fast.send({"type": "stop"})

        reading = asyncio.create_task(fast.until_eos(timeout=90))
        feeding = asyncio.create_task(feed_and_stop())
        try:
            await wait_for(lambda: conn.closed, 60, "the slow client to be cut off")
            cut_at = manager.supervisor.get(sid).seq
            # now read what the server had managed to send, and its close frame
            frames = []
            while True:
                f = await slow.frame()
                assert f is not None, "connection ended without a close frame"
                frames.append(f)
                if f[0] == 0x8:
                    break
            code, reason = struct.unpack("!H", f[1][:2])[0], f[1][2:].decode()
            assert (code, reason) == (4008, "client too slow")
            await slow.send_text(f[1][:2], opcode=0x8)  # complete the closing handshake
            got = [e["seq"] for e in (json.loads(p) for op, p in frames if op == 0x1) if e["seq"] is not None]
            assert_every_seq_once(got, manager.supervisor.get(sid), max(got))  # what it did get: a clean prefix
            assert len(got) < cut_at
            await feeding
            eos = await reading
        finally:
            for task in (feeding, reading):
                task.cancel()
            await asyncio.gather(feeding, reading, return_exceptions=True)
    finally:
        slow.close()
    assert eos["seq"] > cut_at + 2  # the session went on after the cut, and the fast client with it
    assert_every_seq_once(fast.seqs, manager.supervisor.get(sid), eos["seq"])
    assert not fast.errors()
    assert await fast.closed() == (1000, "session ended")


# -- malformed and too-frequent messages ------------------------------------------------------

MALFORMED = [
    ("not json at all", "bad-message"),
    ("", "bad-message"),
    ("[1, 2]", "bad-message"),
    ('"hello"', "bad-message"),
    ("null", "bad-message"),
    ('{"no_type": 1}', "bad-message"),
    ('{"type": "launch-missiles"}', "unknown-type"),
    ('{"type": {"nested": true}}', "unknown-type"),
    ('{"type": "hello"}', "unknown-type"),  # hello only once
    ('{"type": "ack"}', "bad-ack"),
    ('{"type": "ack", "seq": -1}', "bad-ack"),
    ('{"type": "ack", "seq": "3"}', "bad-ack"),
    ('{"type": "ack", "seq": 1.5}', "bad-ack"),
    ('{"type": "ack", "seq": true}', "bad-ack"),
    ('{"type": "ack", "seq": 999999999}', "bad-ack"),  # beyond the session's seq
]


async def test_malformed_messages_get_errors_and_the_connection_stays_usable(jp_serverapp, jp_fetch, jp_ws_fetch, speech, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    c = await Client.connect(jp_ws_fetch, sid)
    for text, code in MALFORMED:
        await c.send(text)
        err = await c.until(lambda e: e["type"] == "error" and e["seq"] is None)
        assert err["data"]["code"] == code, (text, err)
        assert err["sid"] == sid and err["data"]["detail"]
    await c.send(b"\x01\x02\x03")  # odd-length PCM
    assert (await c.until(lambda e: e["type"] == "error" and e["seq"] is None))["data"]["code"] == "bad-pcm"
    assert len(c.errors()) == len(MALFORMED) + 1 < 20  # below the close-after-20 limit
    # still usable: a good ack is accepted silently, audio is transcribed, stop ends it cleanly
    await c.send({"type": "ack", "seq": manager.supervisor.get(sid).seq})
    await c.send({"type": "hb"})
    await feed(c, SHORT)
    await c.send({"type": "stop"})
    eos = await c.until_eos()
    assert any(e["type"] == "asr.final" and e["data"]["text"] for e in c.envs)
    assert len(c.errors()) == len(MALFORMED) + 1  # the good messages drew no error
    assert_every_seq_once(c.seqs, manager.supervisor.get(sid), eos["seq"])
    assert await c.closed() == (1000, "session ended")

    # a binary frame on a file session is refused, and that socket stays usable too
    sid = (await post_session(jp_fetch, {"source": {"kind": "file", "path": speech, "realtime": True}}))["id"]
    c = await Client.connect(jp_ws_fetch, sid)
    await c.send(SHORT[:3200].tobytes())
    assert (await c.until(lambda e: e["type"] == "error" and e["seq"] is None))["data"]["code"] == "not-push"
    await c.send({"type": "finalize"})
    await c.until(lambda e: e["type"] == "asr.final")  # finalize forces the pending speech out
    await c.send({"type": "stop"})
    await c.until_eos()
    assert [e["data"]["code"] for e in c.errors()] == ["not-push"]
    assert await c.closed() == (1000, "session ended")


async def test_twenty_bad_messages_close_with_1008(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    c = await Client.connect(jp_ws_fetch, sid)
    for i in range(25):
        try:
            await c.send(f"junk {i}")
        except tornado.websocket.WebSocketClosedError:
            break
    assert await c.closed() == (1008, "too many bad messages")
    # the 20th error envelope is queued but the close overtakes it (Connection.close stops the
    # sender), so a client sees 19 or 20 of them; all that precede the close are bad-message
    assert len(c.errors()) in (19, 20) and {e["data"]["code"] for e in c.errors()} == {"bad-message"}
    await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


@pytest.mark.parametrize(
    "first",
    [b"\x00\x01", "not json", "[]", '{"type": "ack", "seq": 0}', '{"type": "hb"}', '{"last_seq": 0}',
     '{"type": "hello", "last_seq": -1}', '{"type": "hello", "last_seq": "1"}', '{"type": "hello", "last_seq": 1.5}',
     '{"type": "hello", "resume_token": 7}'],
    ids=lambda v: repr(v)[:30],
)
async def test_a_first_message_that_is_not_hello_closes_1008(jp_serverapp, jp_fetch, jp_ws_fetch, first, manager):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    await ws.write_message(first, binary=isinstance(first, bytes))
    assert await asyncio.wait_for(ws.read_message(), 10) is None
    assert ws.close_code == 1008 and "hello" in ws.close_reason
    assert not manager.hub.channels.get(sid) or not manager.hub.channels[sid].connections
    await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


@server_config(max_message_bytes=1000)
async def test_oversized_messages_get_too_big_errors(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    big_hello = json.dumps({"type": "hello", "pad": "x" * 1000})
    ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
    await ws.write_message(big_hello)  # an oversized first message is no hello
    assert await asyncio.wait_for(ws.read_message(), 10) is None and ws.close_code == 1008
    c = await Client.connect(jp_ws_fetch, sid)
    assert c.welcome["data"]["limits"]["max_message_bytes"] == 1000
    await c.send(json.dumps({"type": "hb", "pad": "x" * 1000}))
    await c.send(bytes(1002))
    await c.send(json.dumps({"type": "hb", "pad": "x" * 900}))  # under the limit: fine
    await c.send(bytes(998))
    await c.send({"type": "ack", "seq": -1})
    await c.until(lambda e: e["type"] == "error" and e["data"]["code"] == "bad-ack")
    assert [e["data"]["code"] for e in c.errors()] == ["too-big", "too-big", "bad-ack"]
    assert "1000" in c.errors()[0]["data"]["detail"]
    await c.send({"type": "stop"})
    await c.until_eos()
    assert await c.closed() == (1000, "session ended")


@server_config(max_message_bytes=1000)
async def test_message_size_limit_counts_bytes(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    c = await Client.connect(jp_ws_fetch, sid)
    try:
        await c.send(json.dumps({"type": "hb", "pad": "é" * 600}, ensure_ascii=False))
        await c.send({"type": "ack", "seq": -1})
        await c.until(lambda e: e["type"] == "error" and e["data"]["code"] == "bad-ack")
        assert [e["data"]["code"] for e in c.errors()] == ["too-big", "bad-ack"]
    finally:
        await c.aclose()
        await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")


@server_config(max_messages_per_second=5.0)
async def test_rate_limit(jp_serverapp, jp_fetch, jp_ws_fetch):
    sid = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    c = await Client.connect(jp_ws_fetch, sid)
    assert c.welcome["data"]["limits"]["max_messages_per_second"] == 5.0
    for _ in range(15):  # a burst of 15 heartbeats: about 5 pass, the rest are refused
        await c.send({"type": "hb"})
    await c.send({"type": "ack", "seq": -1})
    await asyncio.sleep(0.3)
    await c.send({"type": "ack", "seq": -1})  # once the bucket refilled a little, messages count again
    last = await c.until(lambda e: e["type"] == "error" and e["data"]["code"] == "bad-ack", timeout=10)
    codes = [e["data"]["code"] for e in c.errors()]
    assert 5 <= codes.count("rate-limit") <= 11, codes  # 16 in the burst - a full bucket (5) - any refill
    assert set(codes) == {"rate-limit", "bad-ack"} and codes[-1] == "bad-ack"
    assert "5 messages per second" in c.errors()[0]["data"]["detail"]
    await asyncio.sleep(0.5)  # let the bucket refill before the stop
    await c.send({"type": "stop"})
    await c.until_eos()
    assert await c.closed() == (1000, "session ended")


# -- state lifetime ---------------------------------------------------------------------------


async def test_unknown_session_is_404_before_the_upgrade_and_creates_nothing(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    live = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    for sid in ("nosuch", "0" * 12, "x" * 64):
        with pytest.raises(HTTPClientError) as e:
            ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
            ws.close()
        assert e.value.code == 404, sid
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("loquilex", "api", "sessions", sid)
        assert e.value.code == 404 and json.loads(e.value.response.body)["error"] == "http-404"
    with pytest.raises(HTTPClientError) as e:  # not even routed: longer than an id may be
        ws = await jp_ws_fetch("loquilex", "api", "sessions", "x" * 65, "events")
        ws.close()
    assert e.value.code == 404
    assert manager.hub.channels == {}
    assert [s.id for s in manager.supervisor.list(include_ended=True)] == [live]
    await jp_fetch("loquilex", "api", "sessions", live, method="DELETE")


@server_config(replay_window=1.0)
async def test_ended_session_state_is_forgotten_after_the_replay_window(jp_serverapp, jp_fetch, jp_ws_fetch, manager):
    watched = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    dropped = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    unwatched = (await post_session(jp_fetch, {"source": {"kind": "push"}}))["id"]
    c = await Client.connect(jp_ws_fetch, watched)
    d = await Client.connect(jp_ws_fetch, dropped)
    d.drop()  # leaves a resume pin behind
    await feed(c, SHORT)
    await c.send({"type": "stop"})
    await c.until_eos()
    assert await c.closed() == (1000, "session ended")
    for sid in (dropped, unwatched):
        await jp_fetch("loquilex", "api", "sessions", sid, method="DELETE")
    ended = time.monotonic()
    ids = {watched, dropped, unwatched}
    assert dropped in manager.hub.channels and unwatched not in manager.hub.channels
    # still readable right after the end
    r = await jp_fetch("loquilex", "api", "sessions", dropped)
    assert json.loads(r.body)["end"]["kind"] == "clean"

    def forgotten():
        return not ids & set(manager.hub.channels) and not ids & {s.id for s in manager.supervisor.list(include_ended=True)}

    await wait_for(forgotten, 10.0, "the hub and the supervisor to forget ended sessions")
    assert time.monotonic() - ended >= 0.9  # not before the window
    for sid in ids:
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("loquilex", "api", "sessions", sid)
        assert e.value.code == 404
        with pytest.raises(HTTPClientError) as e:
            ws = await jp_ws_fetch("loquilex", "api", "sessions", sid, "events")
            ws.close()
        assert e.value.code == 404
    r = await jp_fetch("loquilex", "api", "resources")
    assert json.loads(r.body)["channels"] == 0


# -- REST -------------------------------------------------------------------------------------


async def test_rest_surface(jp_serverapp, jp_fetch, jp_ws_fetch, speech, manager):
    push = await post_session(jp_fetch, {"source": {"kind": "push"}, "formats": ["vtt", "txt"]})
    assert set(push) == {"id", "state", "owner", "pid", "created", "out_dir", "source", "last_seq", "finals", "end"}
    assert push["source"] == {"kind": "push"} and push["end"] is None and push["owner"] is None
    filed = await post_session(jp_fetch, {"source": {"kind": "file", "path": speech, "realtime": False}})
    assert filed["source"]["kind"] == "file" and filed["source"]["realtime"] is False

    r = await jp_fetch("loquilex", "api", "resources")
    res = json.loads(r.body)
    assert {"server", "sessions", "by_kernel"} <= set(res)
    assert res["server"]["pid"] == os.getpid() and res["by_kernel"] == {}
    rows = {row["sid"]: row for row in res["sessions"]}
    assert set(rows) == {push["id"], filed["id"]}
    for info in (push, filed):
        row = rows[info["id"]]
        assert {"sid", "pid", "owner", "rss", "fds", "cpu_user", "cpu_system", "cpu_percent"} <= set(row), row
        assert row["pid"] == info["pid"] and row["owner"] is None and row["rss"] > 0 and row["fds"] > 0
        assert row["connections"] == 0
    # a watcher is counted against its session (the sidebar's cost shows there), until it goes
    ws = await jp_ws_fetch("loquilex", "api", "sessions", push["id"], "events")
    try:
        rows = {row["sid"]: row for row in json.loads((await jp_fetch("loquilex", "api", "resources")).body)["sessions"]}
        assert rows[push["id"]]["connections"] == 1 and rows[filed["id"]]["connections"] == 0
    finally:
        ws.close()
    await wait_for(lambda: push["id"] not in manager.hub.sockets, 10.0, "the server to forget the closed socket")
    res = json.loads((await jp_fetch("loquilex", "api", "resources")).body)
    assert [row["connections"] for row in res["sessions"]] == [0, 0]

    r = await jp_fetch("loquilex", "api", "sessions")
    assert {s["id"] for s in json.loads(r.body)["sessions"]} == {push["id"], filed["id"]}

    # finalize a running session: 204, no body
    c = await Client.connect(jp_ws_fetch, push["id"])
    await feed(c, SHORT)
    r = await jp_fetch("loquilex", "api", "sessions", push["id"], "finalize", method="POST", body="")
    assert r.code == 204 and r.body == b""
    await c.until(lambda e: e["type"] == "asr.final")
    # DELETE a running session: it is stopped, its worker is gone
    r = await jp_fetch("loquilex", "api", "sessions", push["id"], method="DELETE")
    info = json.loads(r.body)
    assert r.code == 200 and info["end"] is not None and info["state"] == "stopped"
    assert info["end"]["kind"] in ("clean", "terminated")  # polite, or SIGTERM on a starved machine
    assert gone(push["pid"], 0.5)  # already reaped when DELETE answered
    await c.until_eos()
    assert await c.closed() == (1000, "session ended")
    # an ended session: finalize is a conflict, DELETE is idempotent
    with pytest.raises(HTTPClientError) as e:
        await jp_fetch("loquilex", "api", "sessions", push["id"], "finalize", method="POST", body="")
    assert e.value.code == 409 and json.loads(e.value.response.body)["error"] == "session-ended"
    r = await jp_fetch("loquilex", "api", "sessions", push["id"], method="DELETE")
    assert json.loads(r.body)["end"] == info["end"]

    # caption downloads
    r = await jp_fetch("loquilex", "api", "sessions", push["id"], "captions.txt")
    assert r.body.decode().strip()
    with pytest.raises(HTTPClientError) as e:  # not among this session's formats
        await jp_fetch("loquilex", "api", "sessions", push["id"], "captions.srt")
    assert e.value.code == 404
    ws = await Client.connect(jp_ws_fetch, filed["id"])  # a late joiner: the whole log, in order
    eos = await ws.until_eos()
    assert_every_seq_once(ws.seqs, manager.supervisor.get(filed["id"]), eos["seq"])
    finals = [e for e in ws.envs if e["type"] == "asr.final"]
    assert len(finals) >= 5
    assert await ws.closed() == (1000, "session ended")
    r = await jp_fetch("loquilex", "api", "sessions", filed["id"], "captions.srt")
    srt = r.body.decode()
    assert re.search(r"^1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n", srt, re.M), srt[:200]
    assert all(" ".join(f["data"]["text"].split()) in srt for f in finals)
    r = await jp_fetch("loquilex", "api", "sessions", filed["id"], "captions.txt")
    assert all(" ".join(f["data"]["text"].split()) in r.body.decode() for f in finals[-5:])
    r = await jp_fetch("loquilex", "api", "sessions", filed["id"], "captions.vtt")
    assert r.body.startswith(b"WEBVTT")


async def test_caption_downloads_carry_their_content_type(jp_serverapp, jp_fetch, jp_ws_fetch, speech):
    filed = await post_session(jp_fetch, {"source": {"kind": "file", "path": speech, "realtime": False}})
    ws = await Client.connect(jp_ws_fetch, filed["id"])
    await ws.until_eos()
    assert await ws.closed() == (1000, "session ended")
    got = {}
    for fmt in ("vtt", "srt", "txt"):
        r = await jp_fetch("loquilex", "api", "sessions", filed["id"], f"captions.{fmt}")
        got[fmt] = r.headers["Content-Type"].split(";")[0]
    assert got == {"vtt": "text/vtt", "srt": "application/x-subrip", "txt": "text/plain"}


@server_config(max_sessions=2)
async def test_full_server_answers_429(jp_serverapp, jp_fetch, manager):
    a = await post_session(jp_fetch, {"source": {"kind": "push"}})
    b = await post_session(jp_fetch, {"source": {"kind": "push"}})
    for _ in range(2):
        with pytest.raises(HTTPClientError) as e:
            await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps({"source": {"kind": "push"}}))
        assert e.value.code == 429
        body = json.loads(e.value.response.body)
        assert body["error"] == "too-many-sessions" and "limit is 2" in body["message"]
    assert len(manager.supervisor.list()) == 2
    await jp_fetch("loquilex", "api", "sessions", a["id"], method="DELETE")
    c = await post_session(jp_fetch, {"source": {"kind": "push"}})  # room again
    for info in (b, c):
        await jp_fetch("loquilex", "api", "sessions", info["id"], method="DELETE")
    assert all(gone(i["pid"], 5) for i in (a, b, c))
