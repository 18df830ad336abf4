"""Fan-out: replay of an ended non-realtime file session to 1/4/16 WebSocket clients at once,
against a bare Tornado WebSocket server writing the same pre-serialised frames (in a thread of
this process and in a child process: `bench/fanout.py --bare-serve FILE`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from tornado import web
from tornado.websocket import WebSocketHandler, websocket_connect

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import concat_wav, summary  # noqa: E402
from server import SAMPLE, SPEECH, JupyterServer, cpu_s  # noqa: E402

from loquilex_nb.testing.jupyter import free_port  # noqa: E402

FANOUT_CLIENTS = (1, 4, 16)
EOS_MARK = '"type":"eos"'
FANOUT_REPEATS = 3  # speech.wav + sample.wav, this many times, in one file (full mode)


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
