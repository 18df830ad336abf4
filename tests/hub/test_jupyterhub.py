"""A real JupyterHub on 127.0.0.1 (deploy/jupyterhub): proxy, tokens, hub stops, culling.

One hub for the module (it takes seconds to start): users alice, bob, carol and dave,
SimpleLocalProcessSpawner, DummyAuthenticator, configurable-http-proxy from the project's
lockfile, base_url /lx/ (not the default), alice with her default server and a named one.
Every request and WebSocket goes through the proxy with a hub-issued token. The last test
stops the hub with SIGTERM and checks that nothing it started is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil
import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from tests.helpers import FIXTURES, gone, pcm16

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "deploy" / "jupyterhub"))
from localhub import LocalHub  # noqa: E402

SHORT = pcm16(FIXTURES / "short.wav")
SPEECH = pcm16(FIXTURES / "speech.wav")
CHUNK = 1600  # 0.1 s of 16 kHz audio per WebSocket frame
CULL_TIMEOUT = 15  # seconds of inactivity after which the culler stops a server
ACTIVITY_INTERVAL = 1.0  # LoquilexApp.activity_interval in the hub's servers
HUB_ACTIVITY_INTERVAL = 2  # seconds between a single-user server's activity reports to the hub

pytestmark = [pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def hub():
    # not under pytest's basetemp: another pytest run on the machine may prune it meanwhile
    with tempfile.TemporaryDirectory(prefix="loquilex-hub-") as tmp:
        yield from _hub(Path(tmp))


def _hub(tmp: Path):
    h = LocalHub(
        tmp,
        ["alice", "bob", "carol", "dave"],
        base_url="/lx/",
        args=[
            # only what the tests use: a faster start on a busy machine
            "--ServerApp.jpserver_extensions={'jupyter_server_ext': True, 'jupyterlab': False, 'jupyter_lsp': False, 'notebook_shim': False, 'jupyter_server_terminals': False}",
            f"--LoquilexApp.activity_interval={ACTIVITY_INTERVAL}",
        ],
        per_user={"carol": ["--LoquilexApp.idle_sessions_keep_alive=True"]},
        environment={"JUPYTERHUB_ACTIVITY_INTERVAL": str(HUB_ACTIVITY_INTERVAL)},
    )
    h.start()
    try:
        h.start_servers(("alice", ""), ("alice", "talk"))
        h.tokens = {u: h.user_token(u) for u in h.users}
        yield h
    finally:
        h.kill()


# -- helpers ------------------------------------------------------------------------------
class Client:
    """One WebSocket client of a session, through the proxy; a task reads everything."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.envs: list[dict] = []
        self.running = asyncio.Event()
        self.t_eos: float | None = None
        self.close_code: int | None = None
        self.closed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, hub: LocalHub, token: str, prefix: str, sid: str) -> "Client":
        url = hub.url(f"{prefix}loquilex/api/sessions/{sid}/events", scheme="ws")
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}), max_message_size=64 << 20)
        await ws.write_message(json.dumps({"type": "hello"}))
        client = cls(ws)
        await asyncio.wait_for(client.running.wait(), 120)
        return client

    async def _read(self) -> None:
        while (msg := await self.ws.read_message()) is not None:
            env = json.loads(msg)
            self.envs.append(env)
            if env["type"] in ("status", "welcome"):
                state = (env["data"].get("data") or {}).get("state") or (env["data"].get("session") or {}).get("state")
                if state == "running":
                    self.running.set()
            elif env["type"] == "eos":
                self.t_eos = time.monotonic()
        self.close_code = self.ws.close_code
        self.closed.set()

    async def send(self, pcm: np.ndarray, speed: float = 1.0) -> None:
        """Frames of 0.1 s, paced at `speed` x real time on an absolute schedule."""
        t0 = time.monotonic()
        for k, i in enumerate(range(0, len(pcm), CHUNK)):
            delay = t0 + k * CHUNK / 16000 / speed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.ws.write_message(pcm[i : i + CHUNK].tobytes(), binary=True)

    async def stop_and_wait(self, timeout: float = 60.0) -> None:
        await self.ws.write_message(json.dumps({"type": "stop"}))
        await self.wait_closed(timeout)

    async def wait_closed(self, timeout: float = 60.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        await self._task

    async def aclose(self) -> None:
        self.ws.close()
        try:
            await asyncio.wait_for(self.closed.wait(), 10)
        finally:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def of(self, type_: str) -> list[dict]:
        return [e for e in self.envs if e["type"] == type_]

    @property
    def text(self) -> str:
        return " ".join(e["data"]["text"] for e in self.of("asr.final")).strip()


def end_kind(client: Client) -> str | None:
    eos = client.of("eos")
    return eos[0]["data"]["data"]["end"]["kind"] if eos else None


def post_session(hub: LocalHub, user: str, prefix: str, **body) -> dict:
    code, info = hub.request("POST", f"{prefix}loquilex/api/sessions", hub.tokens[user], {"source": {"kind": "push"}, **body})
    assert code == 201, (code, info)
    return info


def last_activity(hub: LocalHub, user: str, prefix: str) -> datetime:
    code, status = hub.request("GET", f"{prefix}api/status", hub.tokens[user])
    assert code == 200, (code, status)
    return datetime.fromisoformat(status["last_activity"].replace("Z", "+00:00"))


def descends_from(pid: int, ancestor: int) -> bool:
    return any(p.pid == ancestor for p in psutil.Process(pid).parents())


def wait_gone(pids, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p for p in pids if not gone(p, max(0.01, deadline - time.monotonic()))]


def speech_for(seconds: float) -> np.ndarray:
    reps = int(np.ceil(seconds * 16000 / len(SPEECH)))
    return np.tile(SPEECH, reps)[: int(seconds * 16000)]


# -- alice captions through the proxy; bob is refused ----------------------------------------
@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["", "talk"], ids=["default-server", "named-server"])
async def test_alice_streams_through_the_proxy(hub, server):
    prefix = hub.prefix("alice", server)
    info = post_session(hub, "alice", prefix, formats=["vtt", "txt"])
    sid, worker = info["id"], info["pid"]
    # the worker lives in the single-user server's process tree (its cgroup/pod)
    assert descends_from(worker, hub.server_process("alice", server).pid)
    client = await Client.open(hub, hub.tokens["alice"], prefix, sid)
    try:
        before = last_activity(hub, "alice", prefix)
        t_stream = time.monotonic()
        await client.send(SHORT)
        await client.send(np.zeros(16000, "<i2"))
        streamed = time.monotonic() - t_stream
        # no HTTP request since `before`: only the sessions' own activity can move it
        after = last_activity(hub, "alice", prefix)
        assert (after - before).total_seconds() >= streamed - 2 * ACTIVITY_INTERVAL - 0.5, (before, after, streamed)
        await client.stop_and_wait()
    finally:
        await client.aclose()
    assert client.close_code == 1000 and end_kind(client) == "clean", client.envs[-3:]
    assert "short test" in client.text.lower(), client.text
    code, vtt = hub.request("GET", f"{prefix}loquilex/api/sessions/{sid}/captions.vtt", hub.tokens["alice"])
    assert code == 200 and vtt.startswith("WEBVTT") and "short test" in vtt.lower(), vtt
    assert wait_gone([worker], 10) == []


@pytest.mark.asyncio
async def test_bob_is_refused_on_every_alice_route(hub):
    prefix = hub.prefix("alice")
    sid = post_session(hub, "alice", prefix)["id"]
    bob = hub.tokens["bob"]
    base = f"{prefix}loquilex/api/"
    try:
        routes = [
            ("GET", "sessions", None), ("POST", "sessions", {"source": {"kind": "push"}}),
            ("GET", f"sessions/{sid}", None), ("DELETE", f"sessions/{sid}", None),
            ("POST", f"sessions/{sid}/finalize", None), ("GET", f"sessions/{sid}/captions.vtt", None),
            ("GET", f"sessions/{sid}/captions.srt", None), ("GET", f"sessions/{sid}/captions.txt", None),
            ("GET", "resources", None),
        ]
        for method, path, body in routes:
            code, answer = hub.request(method, base + path, bob, body)
            assert code == 403, (method, path, code, answer)
        url = hub.url(f"{base}sessions/{sid}/events", scheme="ws")
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {bob}"}))
        assert refused.value.code == 403
        # bob's server was never asked for: the session is untouched and still alice's
        code, info = hub.request("GET", f"{base}sessions/{sid}", hub.tokens["alice"])
        assert code == 200 and info["state"] in ("starting", "running"), info
    finally:
        code, info = hub.request("DELETE", f"{base}sessions/{sid}", hub.tokens["alice"])
        assert code == 200, (code, info)


# -- a kernel in alice's server finds its server under /lx/user/alice/ -----------------------
KERNEL_CODE = """
import json, wave
import numpy as np
import loquilex_nb as lx
with wave.open({wav!r}) as w:
    pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
with lx.session(lx.PushSource()) as s:
    for i in range(0, len(pcm), 3200):
        s.feed(pcm[i:i + 3200])
    s.feed(np.zeros(16000, "<i2"))
    end = s.stop()
    print("LXRESULT", json.dumps({{"backend": type(s.backend).__name__, "url": getattr(s.backend, "url", None),
        "kernel": getattr(s.backend, "kernel_id", None), "id": s.id, "end": end.kind,
        "text": " ".join(e.text for e in s.finals)}}))
"""


async def execute(hub: LocalHub, token: str, prefix: str, kid: str, code: str, timeout: float = 180.0) -> str:
    """Run code in a kernel over its channels WebSocket (through the proxy); returns stdout."""
    url = hub.url(f"{prefix}api/kernels/{kid}/channels", scheme="ws")
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {token}"}))
    try:
        msg_id = uuid.uuid4().hex
        await ws.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "alice", "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        out, deadline = [], time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert raw is not None, "the kernel's WebSocket closed"
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                return "".join(out)
    finally:
        await close_ws(ws)


async def close_ws(ws) -> None:
    """Close and wait for the closing handshake, so the socket is really gone."""
    ws.close()
    deadline = time.monotonic() + 10
    while await asyncio.wait_for(ws.read_message(), max(0.1, deadline - time.monotonic())) is not None:
        pass


@pytest.mark.asyncio
@pytest.mark.leak_settle(10)
async def test_kernel_in_alice_server_uses_server_mode(hub):
    prefix, token = hub.prefix("alice"), hub.tokens["alice"]
    code, kernel = hub.request("POST", f"{prefix}api/kernels", token, {"name": "python3"})
    assert code == 201, (code, kernel)
    kid = kernel["id"]
    try:
        out = await execute(hub, token, prefix, kid, KERNEL_CODE.format(wav=str(FIXTURES / "short.wav")))
        result = json.loads(out.split("LXRESULT", 1)[1])
        assert result["backend"] == "RemoteBackend" and result["kernel"] == kid, result
        # the server's own address (not the proxy's), under the hub's prefix for alice
        assert result["url"] == hub.server_process("alice").environ()["JUPYTERHUB_SERVICE_URL"].rstrip("/") + "/", result
        assert result["url"].startswith("http://127.0.0.1:") and result["url"].endswith("/lx/user/alice/"), result
        assert result["end"] == "clean" and "short test" in result["text"].lower(), result
        code, info = hub.request("GET", f"{prefix}loquilex/api/sessions/{result['id']}", token)
        assert code == 200 and info["owner"] == kid, info
    finally:
        code, _ = hub.request("DELETE", f"{prefix}api/kernels/{kid}", token)
        assert code == 204


# -- a hub stop runs the extension's own cleanup --------------------------------------------
@pytest.mark.asyncio
@pytest.mark.leak_settle(10)
async def test_hub_stop_runs_stop_extension(hub):
    name = "stopme"
    hub.start_servers(("alice", name))
    prefix, token = hub.prefix("alice", name), hub.tokens["alice"]
    server = hub.server_process("alice", name)
    runtime = Path(server.environ()["HOME"]) / ".local" / "share" / "jupyter" / "runtime" / f"jpserver-{server.pid}.json"
    assert runtime.exists()
    infos = [post_session(hub, "alice", prefix, formats=["txt"]) for _ in range(2)]
    clients = [await Client.open(hub, token, prefix, i["id"]) for i in infos]
    try:
        # both sessions are in the middle of an utterance when the hub stops the server
        await asyncio.gather(*(c.send(SPEECH[: 16000 * 4]) for c in clients))
        hub.delete_server("alice", name)  # the local spawner: SIGINT first
        await asyncio.gather(*(c.wait_closed(30) for c in clients))
        server.wait(30)  # not our child: psutil polls until it is gone
        t_exit = time.monotonic()
    finally:
        for c in clients:
            await c.aclose()
    hub.wait_stopped("alice", name)
    for client, info in zip(clients, infos):
        # the orderly path: the server itself stopped the session and told the client,
        # before it exited (the parent-death signal would give a crash and no eos at all)
        eos = client.of("eos")
        assert eos and end_kind(client) == "clean", (eos[0]["data"] if eos else None, hub.log(20000))
        assert client.close_code in (1000, 1001) and client.t_eos < t_exit, (client.close_code, client.t_eos, t_exit)
        finals = client.of("asr.final")
        assert finals, client.envs[-5:]
        final_txt = Path(info["out_dir"]) / "final.txt"
        assert final_txt.read_text().strip().endswith(finals[-1]["data"]["text"].strip()), final_txt.read_text()
    assert wait_gone([i["pid"] for i in infos], 5) == []
    assert not runtime.exists(), "the server left its runtime file"


# -- activity and idle culling ------------------------------------------------------------------
def hub_last_activity(hub: LocalHub, user: str, name: str = "") -> datetime | None:
    code, body = hub.api("GET", f"users/{user}")
    assert code == 200, body
    server = (body.get("servers") or {}).get(name) or {}
    stamp = server.get("last_activity")
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")) if stamp else None


@pytest.mark.asyncio
@pytest.mark.leak_settle(10)
async def test_idle_culler_spares_captioning_servers(hub, tmp_path):
    """alice streams; carol has an open idle session and idle_sessions_keep_alive=True:
    both are spared. bob (no session) and dave (open idle session, default) are culled."""
    hub.start_servers(("bob", ""), ("carol", ""), ("dave", ""))
    carol = post_session(hub, "carol", hub.prefix("carol"))
    dave = post_session(hub, "dave", hub.prefix("dave"))
    alice_sid = post_session(hub, "alice", hub.prefix("alice"))["id"]
    client = await Client.open(hub, hub.tokens["alice"], hub.prefix("alice"), alice_sid)
    culler = streaming = None
    try:
        streaming = asyncio.create_task(client.send(speech_for(CULL_TIMEOUT * 8)))  # cancelled once seen enough
        # the hub knows alice is active before the culler first looks
        t0 = datetime.now().astimezone()
        deadline = time.monotonic() + 30
        while (hub_last_activity(hub, "alice") or t0) <= t0:
            assert time.monotonic() < deadline, "alice's activity never reached the hub"
            await asyncio.sleep(0.5)
        env = dict(os.environ, JUPYTERHUB_API_TOKEN=hub.token, JUPYTERHUB_API_URL=hub.url("hub/api"))
        with open(tmp_path / "culler.log", "wb") as log:
            culler = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={CULL_TIMEOUT}", "--cull-every=2"],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + CULL_TIMEOUT * 3
        while hub.server_running("bob") or hub.server_running("dave"):
            assert time.monotonic() < deadline, f"the idle servers were not culled:\n{(tmp_path / 'culler.log').read_text()}"
            assert not streaming.done(), "streaming ended before the idle servers were culled"
            await asyncio.sleep(0.5)
        # a further full timeout later, the captioning servers are still there
        await asyncio.sleep(CULL_TIMEOUT + 2)
        assert hub.server_running("alice") and hub.server_running("carol"), (tmp_path / "culler.log").read_text()
        assert not streaming.done()
        streaming.cancel()
        await asyncio.gather(streaming, return_exceptions=True)
        await client.stop_and_wait()
        assert client.of("asr.final") and end_kind(client) == "clean"
    finally:
        if culler is not None:
            culler.terminate()
            culler.wait(10)
        if streaming is not None:
            streaming.cancel()
            await asyncio.gather(streaming, return_exceptions=True)
        await client.aclose()
        for user in ("bob", "carol", "dave"):  # bob and dave were culled, unless this test failed
            if hub.server_running(user):
                hub.delete_server(user)
                hub.wait_stopped(user)
    assert wait_gone([dave["pid"], carol["pid"]], 10) == []


# -- last: hub SIGTERM with servers, kernels and sessions running ------------------------------
@pytest.mark.asyncio
@pytest.mark.leak_settle(15)
async def test_hub_sigterm_leaves_no_process_behind(hub):
    # the culler test stopped the idle ones (alice's named server among them)
    hub.start_servers(*(s for s in (("alice", "talk"), ("bob", ""), ("dave", "")) if not hub.server_running(*s)))
    workers = []
    for user, server in (("alice", ""), ("alice", "talk"), ("bob", "")):
        workers.append(post_session(hub, user, hub.prefix(user, server))["pid"])
    code, kernel = hub.request("POST", f"{hub.prefix('alice')}api/kernels", hub.tokens["alice"], {"name": "python3"})
    assert code == 201, kernel
    # a server killed outright takes its workers with it (the parent-death signal)
    dave_worker = post_session(hub, "dave", hub.prefix("dave"))["pid"]
    hub.server_process("dave").send_signal(signal.SIGKILL)
    assert wait_gone([dave_worker], 10) == []
    procs = hub.remember()
    names = set()
    for p in procs:
        try:
            names.add(" ".join(p.cmdline()[:3]))
        except psutil.Error:  # dave's server: a zombie until the hub polls it
            pass
    assert any("ipykernel" in n for n in names) and any("configurable-http-proxy" in n for n in names), names
    assert set(workers) <= {p.pid for p in procs}
    took = hub.stop(60)
    assert hub.proc.returncode == 0, hub.log()
    left = [p for p in hub.survivors() if not gone(p.pid, 10)]
    assert left == [], [(p.pid, p.cmdline()) for p in left]
    assert took < 45, took


# -- SIGINT goes to jupyter_server's stop only under a hub -------------------------------------
class _App:
    """What route_sigint_to_stop reads of a ServerApp: its identity provider and stop handlers."""

    def __init__(self, provider) -> None:
        self.identity_provider = provider
        self.stopped: list[int] = []

    def _signal_stop(self, sig, frame) -> None:
        self.stopped.append(sig)

    def _handle_sigint(self, sig, frame) -> None:  # jupyter_server's tty prompt
        raise AssertionError("the interactive handler must not run under a hub")


@pytest.mark.parametrize("under_hub", [True, False], ids=["hub", "plain"])
def test_sigint_routing_only_under_a_hub(monkeypatch, under_hub):
    import logging

    from jupyter_server.auth.identity import IdentityProvider
    from jupyterhub.singleuser.extension import JupyterHubIdentityProvider

    from jupyter_server_ext.hubsignals import route_sigint_to_stop

    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "x")
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/")
    # the spawner's environment alone is not enough: a kernel of a hub server has it too
    provider = object.__new__(JupyterHubIdentityProvider if under_hub else IdentityProvider)
    app = _App(provider)
    before = signal.getsignal(signal.SIGINT)
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a server without a tty
        assert route_sigint_to_stop(app, logging.getLogger("test")) is under_hub
        if under_hub:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 5
            while not app.stopped:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            assert app.stopped == [signal.SIGINT]
        else:
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        # someone else's handler is left alone, even under a hub
        custom = lambda s, f: None  # noqa: E731
        signal.signal(signal.SIGINT, custom)
        assert route_sigint_to_stop(app, logging.getLogger("test")) is False
        assert signal.getsignal(signal.SIGINT) is custom
    finally:
        signal.signal(signal.SIGINT, before)
