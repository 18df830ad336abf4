"""Server-side measurements for bench/run.py: loquilex behind a real `jupyter server` child.

Every measurement talks to a `python -m jupyter_server` child (127.0.0.1 only, token auth, only
the loquilex extension enabled) started by bench/run.py and terminated in a `finally`:

- fan-out: replay of an ended non-realtime file session to 1/4/16 WebSocket clients at once,
  against a bare Tornado WebSocket server writing the same pre-serialised frames;
- end-to-end final-caption latency of a push session fed in real time over the WebSocket;
- per-session server overhead (fds, sockets, tasks, threads, RSS) and idle CPU with N push sessions;
- REST create/stop cycles with server counters before/after and an RSS curve.

The stalled-client memory run is in stall.py, the fault matrix in faults.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import psutil
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketHandler, websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import REPO, summary  # noqa: E402

SPEECH = REPO / "tests" / "fixtures" / "speech.wav"
SAMPLE = REPO / "loquilex_nb" / "data" / "sample.wav"
FANOUT_CLIENTS = (1, 4, 16)
EOS_MARK = '"type":"eos"'
FANOUT_REPEATS = 3  # speech.wav + sample.wav, this many times, in one file (full mode)
CHUNK_S = 0.1
SILENCE_TAIL_S = 1.0
START_TIMEOUT = 90.0
SESSION_TIMEOUT = 180.0
SETTLE_S = 1.0
BASELINE_TIMEOUT = 20.0
COUNTERS = ("fds", "sockets", "tasks", "threads", "children", "rss")


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counters(res: dict) -> dict:
    srv = res["server"]
    return {
        "fds": srv["fds"],
        "sockets": srv["sockets"],
        "tasks": srv["tasks"],
        "threads": srv["threads"],
        "children": len(srv["children"]),
        "rss": srv["rss"],
        "channels": res.get("channels"),
        "sessions": len(res.get("sessions", [])),
    }


def delta(after: dict, before: dict, keys=COUNTERS) -> dict:
    return {k: (after[k] - before[k]) if after.get(k) is not None and before.get(k) is not None else None for k in keys}


# -- the jupyter server child ---------------------------------------------------------------
class JupyterServer:
    """`python -m jupyter_server` on a free 127.0.0.1 port; always terminated by `stop()`."""

    def __init__(self, root: Path, name: str, extra: dict[str, Any] | None = None, env: dict[str, str] | None = None, keep_log: Path | None = None) -> None:
        self.root = root
        self.name = name
        self.extra = extra or {}
        self.env = env or {}
        self.keep_log = keep_log  # a directory: the log is copied there when the server stops
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.base = f"http://127.0.0.1:{self.port}/"
        self.ws_base = f"ws://127.0.0.1:{self.port}/"
        self.proc: subprocess.Popen | None = None
        self.log_path = root.parent / f"jupyter-{name}.log"
        self.http = AsyncHTTPClient(force_instance=True, max_clients=64)
        self.started_s: float | None = None
        self.shutdown: dict = {}

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def argv(self) -> list[str]:
        argv = [
            sys.executable, "-m", "jupyter_server", "--allow-root", "--no-browser", "--ip=127.0.0.1",
            "--port", str(self.port), "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
            "--LoquilexApp.max_sessions=64",
            # only our extension: faster start, and nothing else's tasks or fds in the counters
            "--ServerApp.jpserver_extensions={'jupyter_server_ext': True, 'jupyterlab': False, 'jupyter_lsp': False, "
            "'notebook_shim': False, 'jupyter_server_terminals': False}",
        ]
        argv += [f"--LoquilexApp.{k}={v}" for k, v in self.extra.items()]
        return argv

    async def start(self) -> None:
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"
        env["JUPYTER_RUNTIME_DIR"] = str(self.root.parent / f"runtime-{self.name}")
        env.update(self.env)
        t0 = time.monotonic()
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv(), stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(self.root))
        deadline = t0 + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                status, _ = await self.rest("GET", "api/status", timeout=2.0)
                if status == 200:
                    break
            except Exception:  # refused / timeout while it starts
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter server not answering /api/status after {START_TIMEOUT:.0f} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)
        self.started_s = time.monotonic() - t0

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_problems(self) -> list[str]:
        """Error lines of the server's log, each with the traceback that follows it."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        out, i = [], 0
        while i < len(lines):
            ln = lines[i]
            if "Traceback" in ln or " ERROR " in ln or "[E " in ln or "Task exception was never retrieved" in ln or "Task was destroyed" in ln:
                block = [ln.rstrip()]
                j = i + 1
                while j < len(lines) and j - i < 40 and (lines[j].startswith((" ", "\t", "Traceback")) or (lines[j] and not lines[j].startswith("["))):
                    block.append(lines[j].rstrip())
                    j += 1
                out.append("\n".join(block)[:3000])
                i = j
            else:
                i += 1
        return out

    def stop(self) -> dict:
        """SIGTERM, wait; SIGKILL if it hangs. Reports shutdown time and leftover workers."""
        if self.proc is None:
            return {}
        kids: list[psutil.Process] = []
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            pass
        t0 = time.monotonic()
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                killed = True
                self.proc.kill()
                self.proc.wait()
        took = time.monotonic() - t0
        time.sleep(0.5)
        left = [p.pid for p in kids if _alive(p)]
        for pid in left:  # never leave workers behind, but report them
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        self._log_file.close()
        if self.keep_log is not None:
            try:
                self.keep_log.mkdir(parents=True, exist_ok=True)
                shutil.copy(self.log_path, self.keep_log / self.log_path.name)
            except OSError:
                pass
        self.shutdown = {
            "took_s": round(took, 3),
            "exit_code": self.proc.returncode,
            "needed_sigkill": killed,
            "children_at_stop": len(kids),
            "children_left": len(left),
            "log_problems": self.log_problems()[:20],
        }
        return self.shutdown

    async def rest(self, method: str, path: str, body: Any = None, timeout: float = 60.0) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        if data is None and method in ("POST", "PUT"):
            data = ""
        req = HTTPRequest(self.base + path, method=method, body=data, headers={**self.headers, "Content-Type": "application/json"}, request_timeout=timeout, connect_timeout=timeout)
        resp = await self.http.fetch(req, raise_error=False)  # still raises for connection errors
        try:
            payload = json.loads(resp.body) if resp.body else None
        except ValueError:
            payload = resp.body
        return resp.code, payload

    async def api(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        code, payload = await self.rest(method, "loquilex/api/" + path, body)
        if code not in ok:
            raise RuntimeError(f"{method} {path} -> {code}: {payload}")
        return payload

    async def resources(self) -> dict:
        return await self.api("GET", "resources")

    async def ws(self, sid: str):
        req = HTTPRequest(f"{self.ws_base}loquilex/api/sessions/{sid}/events", headers=self.headers, connect_timeout=30, request_timeout=30)
        return await websocket_connect(req, max_message_size=64 << 20)

    async def wait_ended(self, sid: str, timeout: float = SESSION_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            info = await self.api("GET", f"sessions/{sid}")
            if info.get("end") is not None:
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"session {sid} did not end within {timeout:.0f} s: {info}")
            await asyncio.sleep(0.2)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- 1. fan-out ---------------------------------------------------------------------------
async def read_all(connect: Callable, hello: dict) -> dict:
    """One client: connect, hello, read every frame until eos.

    Frames are not parsed: a Python client in one thread tops out near the servers' rates,
    and `eos` is recognised by its compact `"type":"eos"` (both servers send the same bytes).
    """
    t0 = time.monotonic()
    ws = await connect()
    t_conn = time.monotonic()
    await ws.write_message(json.dumps(hello))
    n = 0
    t_first = None
    try:
        while True:
            msg = await ws.read_message()
            if msg is None:
                raise RuntimeError(f"socket closed before eos after {n} frames (code {ws.close_code})")
            if t_first is None:
                t_first = time.monotonic()
            n += 1
            if EOS_MARK in msg:
                break
    finally:
        ws.close(1000)
    t_end = time.monotonic()
    return {"frames": n, "connect_s": t_conn - t0, "first_s": (t_first or t_end) - t0, "end": t_end}


async def fan_round(connect: Callable, clients: int) -> dict:
    t0 = time.monotonic()
    results = await asyncio.gather(*(read_all(connect, {"type": "hello", "last_seq": 0}) for _ in range(clients)))
    wall = time.monotonic() - t0
    return {"frames": sum(r["frames"] for r in results), "wall": wall, "first_s": [r["first_s"] for r in results]}


class _BareHandler(WebSocketHandler):
    def initialize(self, frames: list[list[str]]) -> None:
        self.frames = frames
        self.started = False

    def check_origin(self, origin: str) -> bool:
        return True

    async def open(self, idx: str) -> None:  # type: ignore[override]
        self.idx = int(idx)

    async def on_message(self, message) -> None:
        if self.started:
            return
        self.started = True
        for frame in self.frames[self.idx]:
            await self.write_message(frame)


def bare_app(frames: list[list[str]]) -> web.Application:
    return web.Application([(r"/bare/(\d+)", _BareHandler, {"frames": frames})])


class BareThread(threading.Thread):
    """The reference server in this process, on its own thread and event loop."""

    def __init__(self, frames: list[list[str]]) -> None:
        super().__init__(name="bench-bare-ws", daemon=True)
        self.frames = frames
        self.port = free_port()
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop_ev: asyncio.Event | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop_ev = asyncio.Event()
        server = bare_app(self.frames).listen(self.port, address="127.0.0.1")
        self.ready.set()
        await self._stop_ev.wait()
        server.stop()
        await server.close_all_connections()

    def start(self) -> None:  # type: ignore[override]
        super().start()
        self.ready.wait(10)
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self.loop is not None and self._stop_ev is not None:
            self.loop.call_soon_threadsafe(self._stop_ev.set)
        self.join(10)


class BareProcess:
    """The same reference server in a child process (`bench/server.py --bare-serve FILE`)."""

    def __init__(self, frames: list[list[str]], tmp: Path) -> None:
        self.path = tmp / "bare-frames.json"
        self.path.write_text(json.dumps(frames), encoding="utf-8")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, "--bare-serve", str(self.path), "--port", str(self.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = await asyncio.get_running_loop().run_in_executor(None, self.proc.stdout.readline)
        if not line.startswith(b"ready"):
            raise RuntimeError(f"bare server did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _bare_serve(path: str, port: int) -> None:
    frames = json.loads(Path(path).read_text(encoding="utf-8"))

    async def main() -> None:
        bare_app(frames).listen(port, address="127.0.0.1")
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    asyncio.run(main())


def concat_wav(out: Path, parts: list[Path]) -> float:
    """One longer 16 kHz mono int16 file (so one session has many events); returns seconds."""
    pcm = b"".join(read_pcm(p) for p in parts)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return len(pcm) / 32000


async def bench_fanout(srv: JupyterServer, tmp: Path, quick: bool, log: Callable) -> dict:
    shutil.copy(SPEECH, srv.root / "speech.wav")
    repeats = 1 if quick else FANOUT_REPEATS
    rounds = 1 if quick else 3
    audio_s = concat_wav(srv.root / "fanout.wav", [srv.root / "speech.wav", SAMPLE] * repeats)
    t0 = time.monotonic()
    info = await srv.api("POST", "sessions", {"source": {"kind": "file", "path": "fanout.wav", "realtime": False}, "partial_interval": 0.1, "formats": ["txt"]})
    sids = [info["id"]]
    ends = [await srv.wait_ended(sid) for sid in sids]
    log(f"  file session on {audio_s:.0f} s of audio ended after {time.monotonic() - t0:.1f} s, {sum(e['last_seq'] for e in ends)} events")

    # capture the exact frames a late joiner gets; also: does the server close after a replayed eos?
    frames: list[list[str]] = []
    closed_after_replay = []
    for sid in sids:
        ws = await srv.ws(sid)
        await ws.write_message(json.dumps({"type": "hello", "last_seq": 0}))
        got = []
        while True:
            msg = await asyncio.wait_for(ws.read_message(), 30)
            if msg is None:
                raise RuntimeError(f"replay of {sid} closed before eos")
            got.append(msg)
            if json.loads(msg)["type"] == "eos":
                break
        try:
            extra = await asyncio.wait_for(ws.read_message(), 1.5)
            closed_after_replay.append({"closed": extra is None, "code": ws.close_code, "next": None if extra is None else json.loads(extra)["type"]})
        except asyncio.TimeoutError:
            closed_after_replay.append({"closed": False, "code": None, "next": None})
        ws.close()
        frames.append(got)
    sizes = [len(f) for fs in frames for f in fs]
    types = Counter(json.loads(f)["type"] for fs in frames for f in fs)

    bare_t = BareThread(frames)
    bare_t.start()
    bare_p = BareProcess(frames, tmp)
    await bare_p.start()
    pids = {"ours": srv.proc.pid, "bare_thread": None, "bare_process": bare_p.proc.pid}
    variants = {
        "ours": lambda i: (lambda: srv.ws(sids[i])),
        "bare_thread": lambda i: (lambda: websocket_connect(f"ws://127.0.0.1:{bare_t.port}/bare/{i}", max_message_size=64 << 20)),
        "bare_process": lambda i: (lambda: websocket_connect(f"ws://127.0.0.1:{bare_p.port}/bare/{i}", max_message_size=64 << 20)),
    }
    out: dict = {}
    try:
        for n in FANOUT_CLIENTS:
            reps = max(1, max(FANOUT_CLIENTS) // n)  # same frames per round for every N (CPU clock ticks are 10 ms)
            per: dict[str, list[dict]] = {k: [] for k in variants}
            for _ in range(rounds):
                for key, make in variants.items():
                    frames_n, wall, firsts = 0, 0.0, []
                    pid = pids[key]
                    cpu0 = cpu_s(pid) if pid else None
                    for i in [i for i in range(len(sids)) for _ in range(reps)]:
                        r = await fan_round(make(i), n)
                        expected = n * len(frames[i])
                        if r["frames"] != expected:
                            raise RuntimeError(f"{key}: {r['frames']} frames for {n} clients of session {i}, expected {expected}")
                        frames_n += r["frames"]
                        wall += r["wall"]
                        firsts += r["first_s"]
                    cpu = (cpu_s(pid) - cpu0) if pid else None
                    per[key].append({
                        "frames": frames_n, "wall_s": wall, "events_per_s": frames_n / wall,
                        "first_frame_s": summary(firsts)["p50"],
                        "server_cpu_us_per_frame": None if cpu is None else cpu / frames_n * 1e6,
                    })
            med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
            row = {"fanouts_per_round": reps}
            for key, runs in per.items():
                cpus = [x["server_cpu_us_per_frame"] for x in runs if x["server_cpu_us_per_frame"] is not None]
                row[key] = {
                    "events_per_s": med([x["events_per_s"] for x in runs]),
                    "samples": [round(x["events_per_s"], 1) for x in runs],
                    "frames_per_round": runs[0]["frames"],
                    "connect_to_first_frame_p50_s": med([x["first_frame_s"] for x in runs]),
                    "server_cpu_us_per_frame": med(cpus) if cpus else None,
                    "server_cpu_samples": [round(x, 2) for x in cpus],
                }
            # paired per round (same moment, same machine load), then the median
            for ref in ("bare_thread", "bare_process"):
                row[f"ratio_vs_{ref}"] = med([a["events_per_s"] / b["events_per_s"] for a, b in zip(per["ours"], per[ref])])
                row[f"ratio_vs_{ref}_samples"] = [round(a["events_per_s"] / b["events_per_s"], 3) for a, b in zip(per["ours"], per[ref])]
            row["cpu_ratio_vs_bare_process"] = med([a["server_cpu_us_per_frame"] / b["server_cpu_us_per_frame"] for a, b in zip(per["ours"], per["bare_process"])])
            out[str(n)] = row
            log(f"  fan-out {n:>2} clients: ours {row['ours']['events_per_s']:.0f}/s, bare thread {row['bare_thread']['events_per_s']:.0f}/s, bare process {row['bare_process']['events_per_s']:.0f}/s")
    finally:
        bare_t.stop()
        bare_p.stop()
    return {
        "sessions": len(sids),
        "audio_s": round(audio_s, 1),
        "file_parts": f"(speech.wav + sample.wav) × {repeats}",
        "rounds": rounds,
        "frames_per_session": [len(f) for f in frames],
        "frame_bytes": summary(sizes),
        "frame_types": dict(types),
        "end_kinds": dict(Counter(e["end"]["kind"] for e in ends)),
        "server_closed_after_replayed_eos": closed_after_replay,
        "clients": out,
    }


async def close_after_eos(ws, timeout: float = 3.0) -> str:
    """After `eos` the server should close with 1000; returns the close code or 'still open'."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            msg = await asyncio.wait_for(ws.read_message(), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            ws.close(1000)
            return "still open"
        if msg is None:
            return str(ws.close_code)


# -- 2. end-to-end final latency ----------------------------------------------------------
def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise RuntimeError(f"{path} is not 16 kHz mono int16")
        return w.readframes(w.getnframes())


async def bench_latency(srv: JupyterServer, log: Callable, wav: Path = SPEECH) -> dict:
    pcm = read_pcm(wav)
    step = int(16000 * CHUNK_S) * 2
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    audio_chunks = len(chunks)
    chunks += [b"\0" * step] * int(round(SILENCE_TAIL_S / CHUNK_S))
    info = await srv.api("POST", "sessions", {"source": {"kind": "push"}, "formats": ["txt"]})
    sid = info["id"]
    ws = await srv.ws(sid)
    await ws.write_message(json.dumps({"type": "hello"}))
    running = asyncio.Event()
    finals: list[dict] = []
    others = Counter()
    sent_at: list[float] = []
    stop_sent: list[float] = []
    close: dict = {}

    async def reader() -> None:
        while True:
            msg = await ws.read_message()
            now = time.monotonic()
            if msg is None:
                close.update(code=f"{ws.close_code} before eos", reason=ws.close_reason)
                return
            env = json.loads(msg)
            others[env["type"]] += 1
            if env["type"] == "status" and (env["data"].get("data") or {}).get("state") == "running":
                running.set()
            elif env["type"] == "asr.final":
                finals.append({"recv": now, "env": env, "after_stop": bool(stop_sent)})
            elif env["type"] == "eos":
                close["code"] = await close_after_eos(ws)
                return

    rtask = asyncio.create_task(reader())
    try:
        await asyncio.wait_for(running.wait(), 60)
        t_start = time.monotonic()
        for i, chunk in enumerate(chunks):
            delay = t_start + i * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(time.monotonic())
            await ws.write_message(chunk, binary=True)
        await asyncio.sleep(CHUNK_S)
        stop_sent.append(time.monotonic())
        await ws.write_message(json.dumps({"type": "stop"}))
        await asyncio.wait_for(rtask, 60)
    finally:
        rtask.cancel()
        ws.close()
    e2e, worker, delivery, late, rows, minus = [], [], [], [], [], []
    for f in finals:
        d = f["env"]["data"]
        t1 = d.get("t1") or 0.0
        idx = min(len(sent_at) - 1, max(0, math.ceil(round(t1 / CHUNK_S, 6)) - 1))
        lat = f["recv"] - sent_at[idx]
        w = (d.get("data") or {}).get("latency")
        rows.append({"t1": t1, "e2e_s": round(lat, 4), "worker_s": w, "delivery_s": round(f["recv"] - f["env"]["t_mono"], 4), "reason": (d.get("data") or {}).get("reason"), "after_stop": f["after_stop"]})
        if f["after_stop"]:
            late.append(lat)
            continue
        e2e.append(lat)
        delivery.append(f["recv"] - f["env"]["t_mono"])
        if w is not None:
            worker.append(w)
            minus.append(lat - w)
    pacing = [sent_at[i] - (sent_at[0] + i * CHUNK_S) for i in range(len(sent_at))]
    log(f"  latency: {len(e2e)} finals, e2e p50 {summary(e2e)['p50']}, worker p50 {summary(worker)['p50']}")
    return {
        "file": str(wav.relative_to(REPO)),
        "audio_s": audio_chunks * CHUNK_S,
        "chunks": len(chunks),
        "silence_tail_s": SILENCE_TAIL_S,
        "finals": len(finals),
        "finals_after_stop": len(late),
        "e2e_s": summary(e2e),
        "worker_latency_s": summary(worker),
        "delivery_s": summary(delivery),
        "e2e_minus_worker_s": summary(minus),
        "send_lag_s": summary(pacing),
        "event_types": dict(others),
        "close": close,
        "per_final": rows,
    }


# -- 3. per-session overhead --------------------------------------------------------------
async def settle_to(srv: JupyterServer, baseline: dict, keys=("fds", "sockets", "tasks", "threads", "children")) -> tuple[dict, float, bool]:
    t0 = time.monotonic()
    while True:
        now = counters(await srv.resources())
        if all(now[k] == baseline[k] for k in keys):
            return now, time.monotonic() - t0, True
        if time.monotonic() - t0 > BASELINE_TIMEOUT:
            return now, time.monotonic() - t0, False
        await asyncio.sleep(0.5)


async def gather_limited(coros, limit: int) -> list:
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += cpu_s(pid)
        except psutil.Error:
            pass
    return total


def run_ns(pid: int) -> int | None:
    """CPU time of all of a process's threads in ns (/proc/PID/task/*/schedstat; not clock ticks)."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    except OSError:
        return None
    return total


async def idle_cpu(srv: JupyterServer, worker_pids: list[int], seconds: float) -> dict:
    """CPU of the server process itself (workers excluded) and of the workers over `seconds` of idling.

    The server's figure comes from schedstat (ns) when the kernel has it: psutil's user+system
    time moves in 10 ms ticks, too coarse for an idle process; both are recorded.
    """
    pid = srv.proc.pid
    n0, s0, w0, t0 = run_ns(pid), cpu_s(pid), cpu_of(worker_pids), time.monotonic()
    await asyncio.sleep(seconds)
    n1, s1, w1, t1 = run_ns(pid), cpu_s(pid), cpu_of(worker_pids), time.monotonic()
    wall = t1 - t0
    precise = n0 is not None and n1 is not None and n1 >= n0 and (n1 > 0)
    cpu = (n1 - n0) / 1e9 if precise else s1 - s0
    return {
        "wall_s": round(wall, 3), "server_cpu_s": round(cpu, 6), "server_cpu_pct": round(100 * cpu / wall, 4),
        "server_cpu_source": "schedstat" if precise else "psutil", "server_cpu_ticks_s": round(s1 - s0, 3),
        "workers_cpu_s": round(w1 - w0, 3), "workers_cpu_pct": round(100 * (w1 - w0) / wall, 2),
    }


async def bench_overhead(srv: JupyterServer, sizes: tuple[int, ...], log: Callable, idle_s: float = 10.0) -> dict:
    out: dict = {}
    await asyncio.sleep(SETTLE_S)
    first_baseline = counters(await srv.resources())
    idle0 = await idle_cpu(srv, [], idle_s)  # the reference: the same server with no session
    log(f"  idle server, no session: {idle0['server_cpu_s'] * 1000:.0f} ms CPU in {idle0['wall_s']:.1f} s")
    for n in sizes:
        await asyncio.sleep(SETTLE_S)
        base = counters(await srv.resources())
        t0 = time.monotonic()
        infos = await gather_limited((srv.api("POST", "sessions", {"source": {"kind": "push"}, "formats": ["txt"]}) for _ in range(n)), 8)
        create_s = time.monotonic() - t0
        sids = [i["id"] for i in infos]
        running = {sid: asyncio.Event() for sid in sids}
        codes: dict[str, Any] = {}

        async def client(sid: str) -> None:
            ws = await srv.ws(sid)
            await ws.write_message(json.dumps({"type": "hello"}))
            while True:
                msg = await ws.read_message()
                if msg is None:
                    codes[sid] = f"{ws.close_code} before eos"
                    return
                env = json.loads(msg)
                if env["type"] == "eos":
                    codes[sid] = await close_after_eos(ws)
                    return
                if env["type"] == "status" and (env["data"].get("data") or {}).get("state") == "running":
                    running[sid].set()

        tasks = [asyncio.create_task(client(sid)) for sid in sids]
        try:
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in running.values())), SESSION_TIMEOUT)
            all_running_s = time.monotonic() - t0
            await asyncio.sleep(SETTLE_S)
            loaded = counters(await srv.resources())
            idle = await idle_cpu(srv, [i["pid"] for i in infos], idle_s)
            t1 = time.monotonic()
            stopped = await gather_limited((srv.api("DELETE", f"sessions/{sid}") for sid in sids), 64)
            stop_s = time.monotonic() - t1
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
        finally:
            for t in tasks:
                t.cancel()
        after, settle_s, back = await settle_to(srv, base)
        d = delta(loaded, base)
        row = {
            "baseline": base,
            "loaded": loaded,
            "per_session": {k: (v / n if v is not None else None) for k, v in d.items()},
            "idle": idle,
            "idle_server_cpu_per_session_us_per_s": round(1e6 * max(0.0, idle["server_cpu_s"] - idle0["server_cpu_s"] * idle["wall_s"] / idle0["wall_s"]) / n / idle["wall_s"], 2),
            "idle_server_cpu_ratio_vs_no_sessions": (idle["server_cpu_s"] / idle0["server_cpu_s"]) if idle0["server_cpu_s"] else None,
            "create_s": round(create_s, 3),
            "all_running_s": round(all_running_s, 3),
            "stop_all_s": round(stop_s, 3),
            "end_kinds": dict(Counter(i["end"]["kind"] for i in stopped)),
            "ws_close_codes": dict(Counter(str(c) for c in codes.values())),
            "after": after,
            "residual": delta(after, base),
            "back_to_baseline": back,
            "settle_s": round(settle_s, 2),
        }
        out[str(n)] = row
        ps = row["per_session"]
        log(f"  {n} sessions: per session fds {ps['fds']:.2f} tasks {ps['tasks']:.2f} threads {ps['threads']:.2f} rss {ps['rss'] / 1024:.0f} KiB; "
            f"idle server CPU {idle['server_cpu_s'] * 1000:.0f} ms in {idle['wall_s']:.1f} s (workers {idle['workers_cpu_pct']:.0f}% of a core); back to baseline: {back} ({settle_s:.1f} s) residual {row['residual']}")
    return {"first_baseline": first_baseline, "idle_s": idle_s, "idle_no_sessions": idle0, "sizes": out}


# -- 4. create/stop cycles ----------------------------------------------------------------
PARTIAL_CYCLE_EVERY = 5  # one cycle in five is stopped while its worker may still be loading the model


async def wait_state(srv: JupyterServer, sid: str, want: str, timeout: float) -> bool:
    """Poll the session's REST state (the bench has no socket open on cycle sessions)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        code, info = await srv.rest("GET", f"loquilex/api/sessions/{sid}")
        if code == 200 and info.get("state") == want:
            return True
        if code != 200 or info.get("end"):
            return False
        await asyncio.sleep(0.05)
    return False


async def bench_cycles(srv: JupyterServer, target: int, deadline: float, log: Callable, in_flight: int = 3, every: int = 100, at_least: int = 0) -> dict:
    await asyncio.sleep(SETTLE_S)
    base = counters(await srv.resources())
    curve = [{"cycles": 0, **{k: base[k] for k in ("rss", "fds", "threads", "tasks", "children")}}]
    post_s, delete_s, running_s, kinds, errors = [], [], [], Counter(), Counter()
    state = {"next": 0, "done": 0}
    t0 = time.monotonic()

    async def worker() -> None:
        while state["next"] < target and (state["next"] < at_least or time.monotonic() < deadline):
            state["next"] += 1
            n = state["next"]
            t = time.monotonic()
            code, info = await srv.rest("POST", "loquilex/api/sessions", {"source": {"kind": "push"}, "formats": ["txt"]})
            post_s.append(time.monotonic() - t)
            if code != 201:
                errors[f"POST {code}"] += 1
                await asyncio.sleep(0.1)
                state["done"] += 1
                continue
            if n % PARTIAL_CYCLE_EVERY:
                # a full cycle: the worker has loaded its model before it is stopped
                t = time.monotonic()
                if await wait_state(srv, info["id"], "running", SESSION_TIMEOUT):
                    running_s.append(time.monotonic() - t)
                else:
                    errors["never running"] += 1
            t = time.monotonic()
            code, end = await srv.rest("DELETE", f"loquilex/api/sessions/{info['id']}")
            delete_s.append(time.monotonic() - t)
            if code != 200:
                errors[f"DELETE {code}"] += 1
            else:
                kinds[(end.get("end") or {}).get("kind")] += 1
            state["done"] += 1
            if state["done"] % every == 0:
                c = counters(await srv.resources())
                curve.append({"cycles": state["done"], "t_s": round(time.monotonic() - t0, 1), **{k: c[k] for k in ("rss", "fds", "threads", "tasks", "children")}})
                if state["done"] % max(every, 100) == 0:
                    log(f"  {state['done']} cycles, {time.monotonic() - t0:.0f} s, server rss {c['rss'] / 2**20:.1f} MiB, fds {c['fds']}, threads {c['threads']}, tasks {c['tasks']}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.monotonic() - t0
    done = state["done"]
    after_now = counters(await srv.resources())
    after, settle_s, back = await settle_to(srv, base)
    return {
        "target": target,
        "curve_every": every,
        "cycles": done,
        "truncated_by_budget": done < target,
        "in_flight": in_flight,
        "wall_s": round(wall, 1),
        "cycles_per_s": done / wall if wall else None,
        "full_cycles": len(running_s),
        "partial_cycle_every": PARTIAL_CYCLE_EVERY,
        "post_s": summary(post_s),
        "running_s": summary(running_s),
        "delete_s": summary(delete_s),
        "end_kinds": dict(kinds),
        "errors": dict(errors),
        "baseline": base,
        "right_after": after_now,
        "after": after,
        "residual": delta(after, base),
        "back_to_baseline": back,
        "settle_s": round(settle_s, 2),
        "rss_curve_mib": [round(p["rss"] / 2**20, 1) for p in curve],
        "curve": curve,
    }


def main(argv: list[str] | None = None) -> int:
    """Only the bare reference server's child process (`BareProcess`) runs this file directly."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bare-serve", required=True, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _bare_serve(args.bare_serve, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
