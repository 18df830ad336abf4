"""The "Server" section of bench/run.py: loquilex behind a real `jupyter server` subprocess.

    .venv/bin/python bench/server.py [--quick] [--json out.json]   # this section alone

Every measurement talks to a `python -m jupyter_server` child started here (127.0.0.1 only,
token auth) and terminated in a `finally`:

1. fan-out: replay of ended non-realtime file sessions to 1/4/16 WebSocket clients at once,
   against a bare Tornado WebSocket server writing the same pre-serialised frames;
2. end-to-end final-caption latency of a push session fed in real time over the WebSocket;
3. per-session server overhead (fds, sockets, tasks, threads, RSS) with N push sessions;
4. REST create/stop cycles with server counters before/after and an RSS curve.
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
import tempfile
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
SECTION_BUDGET_S = 360.0  # the whole server section, full mode
START_TIMEOUT = 90.0
SESSION_TIMEOUT = 180.0
SETTLE_S = 1.0
BASELINE_TIMEOUT = 20.0
COUNTERS = ("fds", "sockets", "tasks", "threads", "children", "rss")


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def _log_default(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


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

    def __init__(self, root: Path, name: str, extra: dict[str, Any] | None = None) -> None:
        self.root = root
        self.name = name
        self.extra = extra or {}
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
        ]
        argv += [f"--LoquilexApp.{k}={v}" for k, v in self.extra.items()]
        return argv

    async def start(self) -> None:
        env = dict(os.environ)
        env["HF_HUB_OFFLINE"] = "1"
        env["JUPYTER_RUNTIME_DIR"] = str(self.root.parent / f"runtime-{self.name}")
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
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [ln.strip()[:300] for ln in lines if "Traceback" in ln or " ERROR " in ln or "[E " in ln or "Task exception was never retrieved" in ln or "Task was destroyed" in ln]

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
    rounds = 2 if quick else 3
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


async def bench_latency(srv: JupyterServer, log: Callable) -> dict:
    pcm = read_pcm(SPEECH)
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


async def bench_overhead(srv: JupyterServer, sizes: tuple[int, ...], log: Callable) -> dict:
    out: dict = {}
    await asyncio.sleep(SETTLE_S)
    first_baseline = counters(await srv.resources())
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
        log(f"  {n} sessions: per session fds {ps['fds']:.2f} tasks {ps['tasks']:.2f} threads {ps['threads']:.2f} rss {ps['rss'] / 1024:.0f} KiB; back to baseline: {back} ({settle_s:.1f} s) residual {row['residual']}")
    return {"first_baseline": first_baseline, "sizes": out}


# -- 4. create/stop cycles ----------------------------------------------------------------
async def bench_cycles(srv: JupyterServer, target: int, deadline: float, log: Callable, in_flight: int = 3) -> dict:
    await asyncio.sleep(SETTLE_S)
    base = counters(await srv.resources())
    curve = [{"cycles": 0, **{k: base[k] for k in ("rss", "fds", "threads", "tasks", "children")}}]
    post_s, delete_s, kinds, errors = [], [], Counter(), Counter()
    state = {"next": 0, "done": 0}
    t0 = time.monotonic()

    async def worker() -> None:
        while state["next"] < target and time.monotonic() < deadline:
            state["next"] += 1
            t = time.monotonic()
            code, info = await srv.rest("POST", "loquilex/api/sessions", {"source": {"kind": "push"}, "formats": ["txt"]})
            post_s.append(time.monotonic() - t)
            if code != 201:
                errors[f"POST {code}"] += 1
                await asyncio.sleep(0.1)
                state["done"] += 1
                continue
            t = time.monotonic()
            code, end = await srv.rest("DELETE", f"loquilex/api/sessions/{info['id']}")
            delete_s.append(time.monotonic() - t)
            if code != 200:
                errors[f"DELETE {code}"] += 1
            else:
                kinds[(end.get("end") or {}).get("kind")] += 1
            state["done"] += 1
            if state["done"] % 100 == 0:
                c = counters(await srv.resources())
                curve.append({"cycles": state["done"], "t_s": round(time.monotonic() - t0, 1), **{k: c[k] for k in ("rss", "fds", "threads", "tasks", "children")}})
                log(f"  {state['done']} cycles, {time.monotonic() - t0:.0f} s, server rss {c['rss'] / 2**20:.1f} MiB, fds {c['fds']}, threads {c['threads']}, tasks {c['tasks']}")

    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.monotonic() - t0
    done = state["done"]
    after_now = counters(await srv.resources())
    after, settle_s, back = await settle_to(srv, base)
    return {
        "target": target,
        "cycles": done,
        "truncated_by_budget": done < target,
        "in_flight": in_flight,
        "wall_s": round(wall, 1),
        "cycles_per_s": done / wall if wall else None,
        "post_s": summary(post_s),
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


# -- the section --------------------------------------------------------------------------
async def _run(quick: bool, tmp: Path, log: Callable) -> dict:
    started = time.monotonic()
    deadline = started + SECTION_BUDGET_S
    out: dict = {"budget_s": SECTION_BUDGET_S, "servers": {}, "loadavg_start": [round(x, 2) for x in os.getloadavg()]}

    async def with_server(name: str, extra: dict, body):
        root = tmp / f"root-{name}"
        root.mkdir(parents=True, exist_ok=True)
        srv = JupyterServer(root, name, extra)
        try:
            await srv.start()
            log(f" jupyter server '{name}' up in {srv.started_s:.2f} s on 127.0.0.1:{srv.port}")
            t = time.monotonic()
            result = await body(srv)
            result["elapsed_s"] = round(time.monotonic() - t, 1)
            return result
        except Exception as exc:  # one failed part must not lose the rest of the bench
            log(f" server part '{name}' FAILED: {exc!r}")
            return {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        finally:
            srv.http.close()
            info = await asyncio.get_running_loop().run_in_executor(None, srv.stop)
            info["start_s"] = None if srv.started_s is None else round(srv.started_s, 2)
            out["servers"][name] = info

    # the fan-out server keeps ended sessions for the whole measurement
    log(" fan-out (replay to 1/4/16 clients) and end-to-end latency")
    out["fanout"] = await with_server(
        "fanout", {"replay_capacity": 100000, "replay_window": 600.0},
        lambda srv: bench_fanout(srv, tmp, quick, log),
    )
    out["latency"] = await with_server("latency", {}, lambda srv: bench_latency(srv, log))
    sizes = (10,) if quick else (10, 50)
    log(f" per-session overhead with {sizes} push sessions")
    out["overhead"] = await with_server("overhead", {}, lambda srv: bench_overhead(srv, sizes, log))
    target = 50 if quick else 1000
    reserve = 25.0  # settle + server shutdown after the cycles
    log(f" create/stop cycles x{target} (budget: section ends by {SECTION_BUDGET_S:.0f} s)")
    out["cycles"] = await with_server("cycles", {}, lambda srv: bench_cycles(srv, target, deadline - reserve if not quick else float("inf"), log))
    out["elapsed_s"] = round(time.monotonic() - started, 1)
    out["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return out


def bench_server(quick: bool, tmp: Path, log: Callable = _log_default) -> dict:
    """Entry point for bench/run.py: results["server"]."""
    tmp = Path(tmp) / "server"
    tmp.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_run(quick, tmp, log))


# -- rendering ----------------------------------------------------------------------------
def _mib(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:.1f} MiB"


def _kib(x: float | None) -> str:
    return "–" if x is None else f"{x / 1024:.0f} KiB"


def _n(x: float | None, d: int = 2) -> str:
    return "–" if x is None else f"{x:.{d}f}"


def _residual(r: dict) -> str:
    parts = [f"{k} {v:+d}" for k, v in r.items() if k != "rss" and v]
    return ", ".join(parts) or "none"


FANOUT_HEAD = ["clients", "ours events/s", "bare (thread) events/s", "ours ÷ bare", "bare (process) events/s", "ours ÷ bare (process)", "server CPU/frame ours / bare (process)", "CPU ÷ bare", "connect → first frame p50, ours / bare (thread)"]
LATENCY_HEAD = ["measure", "n", "p50", "p90", "min … max"]
OVERHEAD_HEAD = ["sessions", "fds / session", "sockets / session", "tasks / session", "threads / session", "server RSS / session", "all running after", "DELETE all", "back to baseline"]
CYCLES_HEAD = ["cycles", "wall", "cycles/s", "POST p50 / p90", "DELETE p50 / p90", "end", "fds", "threads", "tasks", "children", "server RSS", "back to baseline"]


def fanout_rows(s: dict) -> list[list[str]]:
    rows = []
    for n, r in s["fanout"]["clients"].items():
        rows.append([
            n, f"{r['ours']['events_per_s']:.0f}", f"{r['bare_thread']['events_per_s']:.0f}", f"{r['ratio_vs_bare_thread']:.2f}×",
            f"{r['bare_process']['events_per_s']:.0f}", f"{r['ratio_vs_bare_process']:.2f}×",
            f"{r['ours']['server_cpu_us_per_frame']:.0f} / {r['bare_process']['server_cpu_us_per_frame']:.0f} µs", f"{r['cpu_ratio_vs_bare_process']:.2f}×",
            f"{r['ours']['connect_to_first_frame_p50_s'] * 1000:.1f} / {r['bare_thread']['connect_to_first_frame_p50_s'] * 1000:.1f} ms",
        ])
    return rows


def latency_rows(s: dict) -> list[list[str]]:
    from report import _ms

    lat = s["latency"]
    rows = []
    for key, label in (("e2e_s", "client: final received − chunk with t1 sent"), ("worker_latency_s", "worker `data.latency`"), ("delivery_s", "worker emit → client receive"), ("e2e_minus_worker_s", "client e2e − worker latency, per final"), ("send_lag_s", "client pacing lag (sent − schedule)")):
        x = lat[key]
        rows.append([label, str(x["n"]), _ms(x["p50"]), _ms(x["p90"]), f"{_ms(x['min'])} … {_ms(x['max'])}"])
    return rows


def overhead_rows(s: dict) -> list[list[str]]:
    rows = []
    for n, r in s["overhead"]["sizes"].items():
        p = r["per_session"]
        rows.append([
            n, _n(p["fds"]), _n(p["sockets"]), _n(p["tasks"]), _n(p["threads"]), _kib(p["rss"]),
            f"{r['all_running_s']:.1f} s", f"{r['stop_all_s']:.2f} s",
            ("yes" if r["back_to_baseline"] else "NO") + f" ({r['settle_s']:.1f} s; residual {_residual(r['residual'])}; RSS {r['residual']['rss'] / 2**20:+.1f} MiB)",
        ])
    return rows


def cycles_rows(s: dict) -> list[list[str]]:
    from report import _ms

    c = s["cycles"]
    b, a = c["baseline"], c["after"]
    kinds = ", ".join(f"{k}×{v}" for k, v in sorted(c["end_kinds"].items(), key=lambda kv: str(kv[0])))
    if c["errors"]:
        kinds += "; errors " + ", ".join(f"{k}×{v}" for k, v in c["errors"].items())
    arrow = lambda k: f"{b[k]} → {a[k]}"  # noqa: E731
    return [[
        f"{c['cycles']}" + (f" (of {c['target']}, time budget)" if c["truncated_by_budget"] else ""),
        f"{c['wall_s']:.0f} s", _n(c["cycles_per_s"]),
        f"{_ms(c['post_s']['p50'])} / {_ms(c['post_s']['p90'])}", f"{_ms(c['delete_s']['p50'])} / {_ms(c['delete_s']['p90'])}",
        kinds, arrow("fds"), arrow("threads"), arrow("tasks"), arrow("children"), f"{_mib(b['rss'])} → {_mib(a['rss'])}",
        ("yes" if c["back_to_baseline"] else "NO") + f" ({c['settle_s']:.1f} s)",
    ]]


def _shutdowns(s: dict) -> str:
    parts = []
    for name, info in s["servers"].items():
        if not info:
            continue
        bad = "" if info["children_left"] == 0 and not info["needed_sigkill"] else f", {info['children_left']} workers left, sigkill={info['needed_sigkill']}"
        logp = f", {len(info['log_problems'])} error lines in its log" if info["log_problems"] else ""
        parts.append(f"{name}: start {info['start_s']} s, SIGTERM → exit {info['took_s']:.2f} s (code {info['exit_code']}, {info['children_at_stop']} workers at stop{bad}){logp}")
    return "; ".join(parts)


def _failed(s: dict, key: str) -> str | None:
    part = s.get(key) or {}
    return f"FAILED: {part['error']}" if "error" in part else None


def render_text(s: dict) -> str:
    from report import _table_text

    c = s["cycles"]
    curve = "" if _failed(s, "cycles") else f"\nRSS every 100 cycles (MiB): {c['rss_curve_mib']}"
    return "\n\n".join([
        f"Server (jupyter server subprocess; section took {s['elapsed_s']:.0f} s, load avg {s['loadavg_start'][0]} → {s['loadavg_end'][0]})\n" + (_failed(s, "fanout") or _table_text(FANOUT_HEAD, fanout_rows(s))),
        "Server: end-to-end final latency (push, real-time paced)\n" + (_failed(s, "latency") or _table_text(LATENCY_HEAD, latency_rows(s))),
        "Server: per-session overhead\n" + (_failed(s, "overhead") or _table_text(OVERHEAD_HEAD, overhead_rows(s))),
        "Server: create/stop cycles\n" + (_failed(s, "cycles") or _table_text(CYCLES_HEAD, cycles_rows(s))) + curve,
        "Server processes: " + _shutdowns(s),
    ])


def render_markdown(s: dict) -> str:
    from report import _table_md

    parts = [
        "## Server",
        f"Measured against a real `python -m jupyter_server` child per part (127.0.0.1, token auth, "
        f"`--LoquilexApp.max_sessions=64`), started and terminated by the bench; the section took {s['elapsed_s']:.0f} s "
        f"(load average {s['loadavg_start'][0]} → {s['loadavg_end'][0]}). Wall-clock figures; other load on the machine moves them.",
        "### Fan-out throughput (replay to N clients)",
    ]
    f, lat, c = s["fanout"], s["latency"], s["cycles"]
    if _failed(s, "fanout"):
        parts.append(_failed(s, "fanout"))
    else:
        closes = f["server_closed_after_replayed_eos"]
        closed = sum(1 for x in closes if x["closed"])
        parts += [
            _table_md(FANOUT_HEAD, fanout_rows(s)),
            f"- one ended non-realtime file session on {f['file_parts']} concatenated ({f['audio_s']:.0f} s of audio; "
            "`partial_interval` 0.1 so the batch schedule replays many partials; server started with `replay_capacity=100000`, "
            f"`replay_window=600`): {sum(f['frames_per_session'])} frames per client ({f['frame_types'].get('asr.partial', 0) // max(1, f['sessions'])} partials), "
            f"{f['frame_bytes']['p50']:.0f} bytes median. For each N, N clients connect at once with `hello {{last_seq: 0}}` and "
            "read every frame up to `eos` (not parsed: the clients share one Python thread and would otherwise be the bottleneck); "
            "events/s = frames received by all clients (welcome included) ÷ wall time from the first connect to the last `eos`; "
            "each round repeats the N-client fan-out 16/N times so every round moves the same frames; "
            f"median of {f['rounds']} rounds, ratios are the median of per-round pairs (ours and the reference run back to back). "
            "**server CPU/frame**: user+system CPU of the serving process (the jupyter server; the bare child) over the round ÷ frames "
            "— less sensitive to other load on the machine than events/s.",
            "- **bare**: a Tornado `WebSocketHandler` writing the very frames our server sent (captured), pre-serialised, with "
            "`await self.write_message(...)` after the client's hello; **thread** = in the bench process on its own thread and "
            "event loop (shares the GIL with the clients), **process** = the same app in a child process (like the jupyter "
            "server). Ours also serialises each envelope per connection and runs jupyter's auth on the upgrade.",
            f"- after a replayed `eos` the server closed the socket in {closed} of {len(closes)} cases "
            "(the protocol says 1000 after `eos`).",
        ]
    parts.append("### End-to-end final-caption latency")
    if _failed(s, "latency"):
        parts.append(_failed(s, "latency"))
    else:
        parts += [
            _table_md(LATENCY_HEAD, latency_rows(s)),
            f"- a push session; after its `status running` the client sends `speech.wav` ({lat['audio_s']:.1f} s) as int16 PCM "
            f"binary frames of {CHUNK_S * 1000:.0f} ms paced to the clock, then {lat['silence_tail_s']:g} s of zero samples "
            "(a live microphone keeps going), then `stop`, reading events all along. Per `asr.final`: client receive time − "
            "client send time of the chunk holding the final's `t1`. "
            f"{lat['finals']} finals, of which {lat['finals_after_stop']} arrived after the stop (excluded). "
            "Worker `data.latency` (last audio of the utterance reached the worker → final emitted) for comparison; "
            "**worker emit → client** is the event's `t_mono` to the client's receive time (same host clock). "
            f"The socket closed with {lat['close'].get('code')} after `eos`.",
        ]
    parts.append("### Per-session server overhead")
    if _failed(s, "overhead"):
        parts.append(_failed(s, "overhead"))
    else:
        parts += [
            _table_md(OVERHEAD_HEAD, overhead_rows(s)),
            "- `GET loquilex/api/resources` (the jupyter server process's own counters: fds, sockets, asyncio tasks, threads, "
            "RSS) before, and with N push sessions running (all past `status running`, one WebSocket client each, after "
            f"{SETTLE_S:g} s); per-session = difference ÷ N. Then DELETE all, wait for every socket's close, and poll until fds, "
            f"sockets, tasks, threads and children equal the baseline (up to {BASELINE_TIMEOUT:.0f} s).",
        ]
    parts.append("### Create/stop cycles")
    if _failed(s, "cycles"):
        parts.append(_failed(s, "cycles"))
    else:
        parts += [
            _table_md(CYCLES_HEAD, cycles_rows(s)),
            f"- POST a push session then DELETE it, {c['in_flight']} cycles in flight; counters before and after "
            f"(after settling). Server RSS every 100 cycles (MiB): {c['rss_curve_mib']}.",
        ]
    parts.append("- server processes: " + _shutdowns(s))
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--bare-serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare_serve:
        _bare_serve(args.bare_serve, args.port)
        return 0
    with tempfile.TemporaryDirectory(prefix="loquilex-bench-server-") as tmp:
        result = bench_server(args.quick, Path(tmp))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(render_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
