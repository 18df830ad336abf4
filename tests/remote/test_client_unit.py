"""Server-mode client without the real server: request mapping, discovery, wire conversion,
and the event socket (resume, duplicates, gaps, drops) against a small in-test fake."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import numpy as np
import pytest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, HTTPError, RequestHandler
from tornado.websocket import WebSocketClosedError, WebSocketHandler

import loquilex_nb as lx
from loquilex_nb import backends
from loquilex_nb.core.audio import pcm_to_float32
from loquilex_nb.core.events import EndReason, Event
from loquilex_nb.remote import client, discovery
from loquilex_nb.remote.client import RemoteBackend, end_from_dict, event_from_envelope, event_from_wire, f32le_to_s16le


@pytest.fixture(autouse=True)
def _auto_mode():
    backends._reset()
    yield
    backends._reset()


# -- prepare ---------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path, monkeypatch):
    (tmp_path / "srv" / "talks").mkdir(parents=True)
    (tmp_path / "srv" / "talks" / "a.wav").write_bytes(b"RIFF")
    monkeypatch.chdir(tmp_path / "srv" / "talks")
    return tmp_path / "srv"


def test_prepare_push_with_kernel_and_options():
    b = RemoteBackend("http://127.0.0.1:8888", "t", kernel_id="k-1")
    body = b.prepare(lx.PushSource(), "sid", {"final_lines": 5, "partial_interval": 0.5, "formats": "vtt, srt"})
    assert body == {"source": {"kind": "push"}, "formats": ["vtt", "srt"], "final_lines": 5, "partial_interval": 0.5, "kernel_id": "k-1"}
    assert b.url == "http://127.0.0.1:8888/"
    assert "kernel_id" not in RemoteBackend("http://h/", None).prepare(lx.PushSource(), "sid", {})


def test_prepare_file_paths_are_relative_to_root_dir(root):
    b = RemoteBackend("http://h/", "t", root_dir=root)
    assert b.prepare("a.wav", "s", {})["source"] == {"kind": "file", "path": "talks/a.wav", "realtime": True}
    assert b.prepare(root / "talks" / "a.wav", "s", {"realtime": False})["source"]["path"] == "talks/a.wav"
    assert b.prepare("../talks/./a.wav", "s", {})["source"]["path"] == "talks/a.wav"
    # outside the root the kernel streams the file itself, so it must be audio it can read
    with pytest.raises(ValueError, match="cannot open audio file '/etc/passwd'"):
        b.prepare("/etc/passwd", "s", {})
    with pytest.raises(ValueError, match="'../../elsewhere.wav' does not exist"):
        b.prepare("../../elsewhere.wav", "s", {})
    with pytest.raises(ValueError, match="root_dir, not a file"):
        b.prepare(str(root), "s", {})


def test_prepare_without_root_dir_passes_relative_paths_only():
    b = RemoteBackend("http://h/", "t")
    assert b.prepare("x/a.wav", "s", {})["source"]["path"] == "x/a.wav"
    with pytest.raises(ValueError, match="'/abs/a.wav' does not exist"):
        b.prepare("/abs/a.wav", "s", {})


def test_prepare_a_file_outside_the_root_streams_it_from_the_kernel(root):
    sample = Path(lx.__file__).parent / "data" / "sample.wav"
    body = RemoteBackend("http://h/", "t", root_dir=root).prepare(str(sample), "s", {"realtime": False})
    # the server gets a push session; the path never leaves this process
    assert body["source"] == {"kind": "push"}
    assert body["_kernel_file"] == {"kind": "kernel-file", "path": str(sample.resolve()), "realtime": False}
    assert body == RemoteBackend("http://h/", "t").prepare(str(sample), "s", {"realtime": False})


@pytest.mark.parametrize(
    "source, options, message",
    [
        (lx.MicSource(), {}, "microphone sessions run in embedded mode only"),
        (lx.PushSource(), {"output_root": "/tmp/x"}, "'output_root' cannot be set in server mode"),
        (lx.PushSource(), {"model": "/m"}, "'model' cannot be set in server mode"),
        (lx.PushSource(), {"owner": "k"}, "'owner' cannot be set in server mode"),
        (lx.PushSource(), {"realtime": "yes"}, "realtime must be True or False"),
        (lx.PushSource(), {"formats": ["vtt", "doc"]}, "formats must be"),
        (lx.PushSource(), {"partial_interval": object()}, "plain JSON values"),
        (42, {}, "source must be a file path"),
        (b"a.wav", {}, "source must be"),
    ],
)
def test_prepare_rejects(source, options, message):
    with pytest.raises(ValueError, match=message):
        RemoteBackend("http://h/", "t").prepare(source, "s", options)


def test_prepare_out_and_unknown_options_pass_through():
    body = RemoteBackend("http://h/", "t").prepare(lx.PushSource(), "s", {"out": Path("a/b"), "typo_option": 1})
    assert body["out"] == "a/b" and body["typo_option"] == 1  # the server names the bad key


def test_backend_rejects_non_http_urls():
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteBackend("ws://h/", "t")


# -- wire conversion -------------------------------------------------------------------------
FINAL_ENV = {
    "v": 1, "type": "asr.final", "sid": "abc", "seq": 7, "t_wall": 1.5, "t_mono": 2,
    "data": {"segment_id": 3, "text": "hello there", "t0": 0.5, "t1": 1.25, "words": [{"w": "hello", "t0": 0.5, "t1": 0.8, "p": 0.9}], "data": None},
}


def test_envelope_to_event():
    ev = event_from_envelope(FINAL_ENV)
    assert ev == Event("asr.final", "abc", 7, 1.5, 2.0, segment_id=3, text="hello there", t0=0.5, t1=1.25, words=FINAL_ENV["data"]["words"])
    status = event_from_envelope({"v": 1, "type": "status", "sid": "abc", "seq": 1, "t_wall": 0, "t_mono": 0, "data": {"data": {"state": "running"}}})
    assert status.data == {"state": "running"} and status.text is None and status.segment_id is None
    # snapshots may carry envelopes or Event.as_dict(); both come back as the same Event
    assert event_from_wire(FINAL_ENV) == ev
    assert event_from_wire(ev.as_dict()) == ev
    st = Event("status", "abc", 2, 0.0, 0.0, data={"state": "stopped"})
    assert event_from_wire(st.as_dict()) == st


def test_end_reason_from_dict():
    end = EndReason("killed", -9, "SIGKILL", ("a", "b"))
    assert end_from_dict(end.as_dict()) == end


def test_f32_to_int16():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0, 1e-6], dtype="<f4")
    out = np.frombuffer(f32le_to_s16le(x.tobytes()), dtype="<i2")
    assert out.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767, 0]
    y = np.sin(np.linspace(0, 50, 1600)).astype("<f4") * 0.8
    back = pcm_to_float32(f32le_to_s16le(y.tobytes()), "s16le")
    assert np.max(np.abs(back - y)) < 1.0 / 16000
    with pytest.raises(ValueError, match="multiple of 4"):
        f32le_to_s16le(b"\0\0\0")


# -- discovery -------------------------------------------------------------------------------
@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    d = tmp_path / "runtime"
    d.mkdir()
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(d))
    monkeypatch.delenv("LOQUILEX_MODE", raising=False)
    return d


def write_server_file(runtime_dir, pid, url, token="secret", root_dir="/srv"):
    info = {"pid": pid, "url": url, "token": token, "root_dir": root_dir, "base_url": "/"}
    (runtime_dir / f"jpserver-{pid}.json").write_text(json.dumps(info))
    return info


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_discovery_outside_a_kernel(runtime_dir, monkeypatch):
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    write_server_file(runtime_dir, os.getpid(), closed_port_url())
    t = time.monotonic()
    assert discovery.find_server() is None
    assert discovery.kernel_id() is None
    assert backends.current_backend() is None
    assert time.monotonic() - t < 0.5


def test_discovery_parent_pid_matching_no_server(runtime_dir, monkeypatch):
    write_server_file(runtime_dir, os.getpid() + 1, closed_port_url())
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    assert discovery.find_server() is None
    monkeypatch.setenv("JPY_PARENT_PID", "not-a-pid")
    assert discovery.find_server() is None


def test_discovery_server_without_the_extension(runtime_dir, monkeypatch):
    write_server_file(runtime_dir, os.getpid(), closed_port_url())
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    t = time.monotonic()
    assert discovery.find_server() is None
    assert time.monotonic() - t < 2.5


def test_kernel_id_from_command_line(monkeypatch, tmp_path):
    f = tmp_path / "kernel-1234-abcd.json"
    f.write_text("{}")
    monkeypatch.setattr("sys.argv", ["ipykernel_launcher.py", "-f", str(f)])
    assert discovery.kernel_id() == "1234-abcd"
    monkeypatch.setattr("sys.argv", ["x", f"--f={f}"])
    assert discovery.kernel_id() == "1234-abcd"
    monkeypatch.setattr("sys.argv", ["pytest", "-f", "notes.txt"])
    assert discovery.kernel_id() is None


def test_connect_and_embedded_choice(runtime_dir, monkeypatch):
    monkeypatch.delenv("JPY_PARENT_PID", raising=False)
    info = write_server_file(runtime_dir, os.getpid(), "http://localhost:8123/lab/", token="tok", root_dir="/data")
    b = backends.connect("http://127.0.0.1:8123/lab", check=False)
    # a local server's token and root_dir come from its runtime file
    assert (b.url, b.token, str(b.root_dir), b.kernel_id) == ("http://127.0.0.1:8123/lab/", info["token"], "/data", None)
    assert backends.current_backend() is b
    assert backends.connect(None) is None and backends.current_backend() is None
    with pytest.raises(ConnectionError, match="no loquilex server extension"):
        backends.connect(closed_port_url(), "t")


# -- a fake server for the socket ------------------------------------------------------------
class Fake:
    """Just enough of docs/PROTOCOL.md to drive one push session from the test."""

    def __init__(self, out_dir):
        self.token = "secret"
        self.info = {"id": "r1", "state": "running", "owner": "k1", "pid": 4242, "created": 0.0, "out_dir": str(out_dir),
                     "source": {"kind": "push"}, "last_seq": 0, "finals": 0, "end": None}
        self.events: list[dict] = []
        self.sockets: list[WebSocketHandler] = []
        self.hellos: list[dict] = []
        self.messages: list[dict] = []
        self.bodies: list[dict] = []
        self.deletes = 0
        self.audio = bytearray()
        self.overlap = 0  # replay this many events the client already has
        self.forget_upto = 0  # events up to here are gone: answer with a gap
        self.full = False
        self.refuse_ws = False

    def emit(self, type_, **fields):
        data = {k: fields.get(k) for k in ("segment_id", "text", "t0", "t1", "words")}
        data["data"] = fields.get("data")
        env = {"v": 1, "type": type_, "sid": "r1", "seq": len(self.events) + 1, "t_wall": time.time(), "t_mono": time.monotonic(), "data": data}
        self.events.append(env)
        for h in list(self.sockets):
            send(h, env)
        return env

    def end(self):
        end = {"kind": "clean", "exit_code": 0, "detail": "", "stderr_tail": []}
        self.info.update(state="stopped", end=end)
        self.emit("status", data={"state": "stopped", "end": end})
        self.emit("eos", data={"end": end})
        for h in list(self.sockets):
            h.close(1000, "session ended")

    def kick(self, code=4008, reason="client too slow"):
        for h in list(self.sockets):
            h.close(code, reason)

    def cut(self):
        for h in list(self.sockets):
            h.ws_connection.stream.close()  # no close frame: like a network failure


def send(h, env):
    try:
        h.write_message(json.dumps(env))
    except WebSocketClosedError:
        pass


class Authed(RequestHandler):
    def prepare(self):
        self.fake = self.settings["fake"]
        if self.request.headers.get("Authorization") != f"token {self.fake.token}":
            raise HTTPError(403)

    def fail(self, code, message):
        self.set_status(code)
        self.finish({"error": "bad", "message": message})


class SessionsHandler(Authed):
    def get(self):
        self.finish({"sessions": [self.fake.info]})

    def post(self):
        body = json.loads(self.request.body)
        self.fake.bodies.append(body)
        if self.fake.full:
            return self.fail(429, "4 sessions are running, the limit is 4")
        unknown = sorted(set(body) - {"source", "formats", "kernel_id", "out", "final_lines"})
        if unknown:
            return self.fail(400, f"unknown option(s) {unknown}")
        self.fake.emit("status", data={"state": "starting"})
        self.fake.emit("status", data={"state": "running"})
        self.set_status(201)
        self.finish(self.fake.info)


class SessionHandler(Authed):
    def get(self, sid):
        if sid != "r1":
            raise HTTPError(404)
        self.finish(self.fake.info)

    def delete(self, sid):
        self.fake.deletes += 1
        if self.fake.info["end"] is None:
            self.fake.end()
        self.finish(self.fake.info)


class EventsHandler(WebSocketHandler):
    async def get(self, sid):
        self.fake = self.settings["fake"]
        if sid != "r1" or self.fake.refuse_ws or self.request.headers.get("Authorization") != f"token {self.fake.token}":
            raise HTTPError(404)
        await super().get(sid)

    def on_message(self, message):
        fake = self.fake
        if isinstance(message, bytes):
            fake.audio += message
            return
        msg = json.loads(message)
        if msg["type"] != "hello":
            fake.messages.append(msg)
            if msg["type"] == "stop" and fake.info["end"] is None:
                fake.emit("asr.final", segment_id=99, text="last words", t0=5.0, t1=6.0)
                fake.end()
            return
        fake.hellos.append(msg)
        last = msg.get("last_seq", 0)
        welcome = {"resume_token": f"tok-{len(fake.hellos)}", "hb_interval": 0.2, "hb_timeout": 3, "replay_window": 5,
                   "limits": {"max_message_bytes": 4096, "max_messages_per_second": 200, "send_queue_limit": 100}, "session": fake.info}
        send(self, {"v": 1, "type": "welcome", "sid": "r1", "seq": None, "t_wall": 0, "t_mono": 0, "data": welcome})
        start = max(0, last - fake.overlap)
        if last < fake.forget_upto:
            lacking = [e for e in fake.events if e["type"] == "asr.final" and last < e["seq"] <= fake.forget_upto]
            gap = {"from_seq": last + 1, "to_seq": fake.forget_upto, "snapshot": {"finals": lacking, "partial": None, "state": fake.info["state"]}}
            send(self, {"v": 1, "type": "gap", "sid": "r1", "seq": None, "t_wall": 0, "t_mono": 0, "data": gap})
            start = fake.forget_upto
        for env in fake.events[start:]:
            send(self, env)
        if fake.info["end"] is not None:
            self.close(1000, "session ended")
        else:
            fake.sockets.append(self)

    def on_close(self):
        if self in self.fake.sockets:
            self.fake.sockets.remove(self)


@asynccontextmanager
async def fake_server(tmp_path):
    # a context manager, not an async fixture: this suite may run under pytest-jupyter's
    # coroutine runner, which does not drive async fixtures
    f = Fake(tmp_path / "out")
    app = Application([
        (r"/base/loquilex/api/sessions", SessionsHandler),
        (r"/base/loquilex/api/sessions/([^/]+)", SessionHandler),
        (r"/base/loquilex/api/sessions/([^/]+)/events", EventsHandler),
    ], fake=f)
    server = HTTPServer(app)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    f.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/base/"
    f.server = server
    try:
        yield f
    finally:
        server.stop()
        for h in list(f.sockets):
            h.close()
        await server.close_all_connections()


@contextmanager
def fake_in_thread(tmp_path):
    """The fake on its own loop thread, for blocking callers (discovery, the sync handle)."""
    loop = asyncio.new_event_loop()
    ready: Future = Future()

    async def serve():
        stop = asyncio.Event()
        async with fake_server(tmp_path) as fake:
            ready.set_result((fake, stop))
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), name="fake-server")
    thread.start()
    fake, stop = ready.result(5)

    def call(fn, *args, **kwargs):
        async def run():
            return fn(*args, **kwargs)
        return asyncio.run_coroutine_threadsafe(run(), loop).result(5)

    try:
        yield fake, call
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()


async def until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def backend_for(fake):
    return RemoteBackend(fake.url, fake.token, kernel_id="k1")


async def test_push_session_through_the_socket(tmp_path):
    async with fake_server(tmp_path) as fake:
        s = lx.session(lx.PushSource(), backend=backend_for(fake), formats="vtt,txt")
        x = np.sin(np.linspace(0, 300, 16000)).astype(np.float32) * 0.5
        async with s as a:
            await a.feed(x)
            await a.feed(np.arange(-50, 50, dtype=np.int16))
            fake.emit("asr.partial", segment_id=1, text="hel", t0=0.0, t1=0.4)
            fake.emit("asr.final", segment_id=1, text="hello", t0=0.0, t1=0.9, words=[{"w": "hello", "t0": 0.0, "t1": 0.9, "p": 0.9}])
            await a.finalize()
            end = await a.stop()
            events = [e async for e in a]
        assert end == EndReason("clean", 0) and s.end == end and s.status == "stopped"
        assert fake.bodies == [{"source": {"kind": "push"}, "formats": ["vtt", "txt"], "kernel_id": "k1"}]
        assert bytes(fake.audio) == f32le_to_s16le(x.tobytes()) + np.arange(-50, 50, dtype="<i2").tobytes()
        assert [e.seq for e in events] == list(range(1, len(fake.events) + 1))
        assert [e.type for e in events][-1] == "eos" and events[0].sid == "r1"
        assert [f.text for f in s.finals] == ["hello", "last words"] and s.finals[0].words[0]["w"] == "hello"
        assert s.pid == 4242
        out = Path(fake.info["out_dir"])
        assert s.outputs == {"partial": out / "partial.txt", "final": out / "final.txt", "vtt": out / "captions.vtt"}
        kinds = [m["type"] for m in fake.messages]
        assert kinds.index("finalize") < kinds.index("stop")
        acks = [m["seq"] for m in fake.messages if m["type"] == "ack"]
        assert acks == sorted(acks) and all(a <= len(fake.events) for a in acks)
        assert fake.deletes == 0, "a socket stop needs no DELETE"


async def test_the_client_takes_every_state_the_server_sends(tmp_path):
    # README: starting → running → (stopping) → finished → stopped | failed; `finished` is the
    # worker's own report, relayed by the server like the rest
    async with fake_server(tmp_path) as fake:
        s = lx.session(lx.PushSource(), backend=backend_for(fake))
        async with s as a:
            for state in ("stopping", "finished"):
                fake.emit("status", data={"state": state, "reason": "stop"})
                await until(lambda state=state: s.status == state)
            await a.stop()
            events = [e async for e in a]
        assert s.status == "stopped"
        states = [e.data["state"] for e in events if e.type == "status"]
        assert states == ["starting", "running", "stopping", "finished", "stopped"]


async def test_drops_are_invisible_to_the_handle(tmp_path):
    async with fake_server(tmp_path) as fake:
        s = lx.session(lx.PushSource(), backend=backend_for(fake))
        async with s as a:
            for i in range(3):
                fake.emit("asr.final", segment_id=i, text=f"one {i}", t0=i, t1=i + 0.5)
            await until(lambda: len(s.finals) == 3)
            fake.overlap = 3  # the server replays from its last ack: we get some events twice
            fake.kick(4008)
            fake.emit("asr.final", segment_id=3, text="while away", t0=3, t1=3.5)
            await until(lambda: len(fake.hellos) == 2 and fake.sockets)
            await a.feed(np.ones(8000, dtype=np.int16))
            await until(lambda: len(fake.audio) == 16000)  # frames in flight at a drop are lost
            fake.emit("asr.final", segment_id=4, text="back", t0=4, t1=4.5)
            await until(lambda: len(s.finals) == 5)
            fake.cut()
            await asyncio.sleep(0)
            fake.emit("asr.partial", segment_id=5, text="aga", t0=5, t1=5.2)
            await until(lambda: len(fake.hellos) == 3 and fake.sockets)
            end = await a.stop()
            events = [e async for e in a]
        assert end.kind == "clean"
        assert [e.seq for e in events] == list(range(1, len(fake.events) + 1)), "no event lost, none twice"
        assert [f.text for f in s.finals] == ["one 0", "one 1", "one 2", "while away", "back", "last words"]
        assert fake.hellos[0] == {"type": "hello", "last_seq": 0}
        assert fake.hellos[1] == {"type": "hello", "last_seq": 5, "resume_token": "tok-1"}
        assert fake.hellos[2] == {"type": "hello", "last_seq": 7, "resume_token": "tok-2"}
        assert len(fake.audio) == 16000 and bytes(fake.audio) == np.ones(8000, dtype="<i2").tobytes(), len(fake.audio)


async def test_gap_inserts_the_finals_it_lacks(tmp_path):
    async with fake_server(tmp_path) as fake:
        s = lx.session(lx.PushSource(), backend=backend_for(fake))
        async with s as a:
            fake.emit("asr.final", segment_id=0, text="kept", t0=0, t1=1)
            await until(lambda: len(s.finals) == 1)
            fake.kick(4008)
            fake.emit("asr.partial", segment_id=1, text="lo", t0=1, t1=1.2)
            fake.emit("asr.final", segment_id=1, text="lost one", t0=1, t1=2)
            fake.emit("asr.partial", segment_id=2, text="lo", t0=2, t1=2.2)
            fake.emit("asr.final", segment_id=2, text="lost two", t0=2, t1=3)
            fake.forget_upto = len(fake.events)
            await until(lambda: len(s.finals) == 3)
            fake.emit("asr.final", segment_id=3, text="live", t0=3, t1=4)
            end = await a.stop()
            events = [e async for e in a]
        assert end.kind == "clean"
        assert [f.text for f in s.finals] == ["kept", "lost one", "lost two", "live", "last words"]
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)) and 4 not in seqs and 6 not in seqs and 5 in seqs and 7 in seqs


async def test_server_errors_surface_as_exceptions(tmp_path):
    async with fake_server(tmp_path) as fake:
        with pytest.raises(ValueError, match=r"unknown option\(s\) \['bogus'\]"):
            await lx.session(lx.PushSource(), backend=backend_for(fake), bogus=1).astart()
        fake.full = True
        with pytest.raises(lx.SessionLimitError, match="limit is 4"):
            await lx.session(lx.PushSource(), backend=backend_for(fake)).astart()
        with pytest.raises(PermissionError, match="403"):
            await lx.session(lx.PushSource(), backend=RemoteBackend(fake.url, "wrong")).astart()
        with pytest.raises(ConnectionError, match="cannot reach"):
            await lx.session(lx.PushSource(), backend=RemoteBackend(closed_port_url(), "t")).astart()


async def test_socket_refused_after_create_stops_the_session(tmp_path):
    async with fake_server(tmp_path) as fake:
        fake.refuse_ws = True
        with pytest.raises(ConnectionError, match="r1 started .* event socket failed .*stopped"):
            await lx.session(lx.PushSource(), backend=backend_for(fake)).astart()
        assert fake.deletes == 1 and fake.info["end"]["kind"] == "clean"


async def test_unreachable_server_ends_as_disconnected(tmp_path, monkeypatch):
    async with fake_server(tmp_path) as fake:
        monkeypatch.setattr(client, "RECONNECT_WINDOW", 0.8)
        s = lx.session(lx.PushSource(), backend=backend_for(fake))
        a = await s.astart()
        fake.emit("asr.final", segment_id=0, text="before", t0=0, t1=1)
        await until(lambda: len(s.finals) == 1)
        fake.server.stop()  # nothing listens any more
        fake.cut()
        t = time.monotonic()
        end = await a.wait(10)
        assert end is not None and end.kind == "disconnected" and "may still run" in end.detail
        assert time.monotonic() - t < 5 and s.status == "failed"
        with pytest.raises(Exception, match="has ended"):
            await a.feed(np.zeros(10, dtype=np.int16))
        assert [e.text for e in [e async for e in a] if e.type == "asr.final"] == ["before"]
        t = time.monotonic()
        await s.aclose()
        await s.aclose()
        assert time.monotonic() - t < 5


def test_sync_handle_over_the_socket(tmp_path):
    with fake_in_thread(tmp_path) as (fake, call):
        with lx.session(lx.PushSource(), backend=backend_for(fake)) as s:
            s.feed(np.zeros(1600, dtype=np.float32))
            call(fake.emit, "asr.final", segment_id=0, text="sync", t0=0, t1=1)
            end = s.stop()
            events = list(s.events())
        assert end.kind == "clean" and s.close() == end
        assert [f.text for f in s.finals] == ["sync", "last words"]
        assert [e.seq for e in events] == list(range(1, len(fake.events) + 1))
        assert len(fake.audio) == 3200


def test_auto_detection_inside_a_kernel(tmp_path, runtime_dir, monkeypatch):
    conn_file = tmp_path / "kernel-k-42.json"
    conn_file.write_text("{}")
    monkeypatch.setattr("sys.argv", ["ipykernel_launcher.py", "-f", str(conn_file)])
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    with fake_in_thread(tmp_path) as (fake, _call):
        write_server_file(runtime_dir, os.getpid(), fake.url, token=fake.token, root_dir=str(tmp_path))
        assert discovery.find_server()["url"] == fake.url
        monkeypatch.setenv("LOQUILEX_MODE", "embedded")
        assert discovery.find_server() is None and backends.current_backend() is None
        monkeypatch.delenv("LOQUILEX_MODE")
        b = backends.current_backend()
        assert (b.url, b.token, b.kernel_id, b.root_dir) == (fake.url, fake.token, "k-42", tmp_path)
        assert backends.current_backend() is b, "detected once, then cached"
        assert lx.backends.default_backend() is b
        assert backends.connect(fake.url).kernel_id == "k-42", "our own server: the kernel id applies"
        # a detected backend gives file paths relative to the server's root_dir
        assert b.prepare(str(conn_file), "s", {})["source"]["path"] == "kernel-k-42.json"
