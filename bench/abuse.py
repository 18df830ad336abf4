"""Fault-matrix rows for hostile and careless clients (issue 9), against a real server.

- flooding client: one WebSocket sends 0.1 s frames at 380 a second (38x real time);
- 150 connections: 150 WebSockets to one push session, each admitted one sending 1 MiB frames;
- symlink swap: the posted file is replaced by a symlink to a file outside root_dir at once.

Each row reports what the client sees, the peak growth of server and worker RSS, and (as the
other fault rows) the resources left once things settle and the time to a clean state.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

import psutil

from faults_common import FIXTURES, Watcher, final_lines, finish_row, run_row, server_settle
from faults_server import post, push_session
from measure import read_pcm

MiB = 1 << 20
FLOOD_RATE = 380


class Peak:
    """Peak RSS of the server and of one worker, sampled by a task while a row runs."""

    def __init__(self, server_pid: int, worker_pid: int | None) -> None:
        self.procs = {"server": psutil.Process(server_pid)}
        if worker_pid:
            self.procs["worker"] = psutil.Process(worker_pid)
        self.base = {k: p.memory_info().rss for k, p in self.procs.items()}
        self.peak = dict(self.base)
        self._task: asyncio.Task | None = None

    async def _sample(self) -> None:
        while True:
            for k, p in self.procs.items():
                try:
                    self.peak[k] = max(self.peak[k], p.memory_info().rss)
                except psutil.Error:
                    pass
            await asyncio.sleep(0.05)

    def __enter__(self) -> "Peak":
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *exc) -> None:
        if self._task is not None:
            self._task.cancel()

    def growth(self) -> dict:
        return {f"{k}_rss_growth_mib": round((self.peak[k] - self.base[k]) / MiB, 1) for k in self.procs}

    def text(self) -> str:
        return ", ".join(f"{k.split('_')[0]} RSS +{v} MiB" for k, v in self.growth().items())


def speech_frames(n_bytes: int):
    speech = read_pcm(FIXTURES / "speech.wav")
    data = speech * (2 + n_bytes // len(speech))
    offset = 0
    while True:
        yield data[offset : offset + n_bytes]
        offset = (offset + n_bytes) % len(speech)


async def close_ws(ws) -> None:
    ws.close()
    try:
        while await asyncio.wait_for(ws.read_message(), 10) is not None:
            pass
    except (asyncio.TimeoutError, Exception):
        pass


async def row_flooding_client(srv, counters, seconds: float) -> dict:
    base = counters(await srv.resources())
    info, w = await push_session(srv)
    ws = await srv.ws(info["id"])
    await ws.write_message(json.dumps({"type": "hello"}))
    sent, held_back = 0, 0.0
    with Peak(srv.proc.pid, info["pid"]) as peak:
        frames, start = speech_frames(3200), time.monotonic()
        while (now := time.monotonic()) - start < seconds:
            t = time.monotonic()
            try:
                await asyncio.wait_for(ws.write_message(next(frames), binary=True), start + seconds - now + 1)
            except asyncio.TimeoutError:
                break
            held_back += time.monotonic() - t
            sent += 1
            due = start + sent / FLOOD_RATE - time.monotonic()
            if due > 0:
                await asyncio.sleep(due)
        t_fault = time.monotonic()
        end = await srv.api("DELETE", f"sessions/{info['id']}")
        t_end = time.monotonic()
    await close_ws(ws)
    await w.aclose()
    left = await server_settle(srv, base, [info["pid"]], counters)
    row = {
        "fault": "flooding client", "mode": "server",
        "how": f"push session; one WebSocket sends 0.1 s int16 frames at {FLOOD_RATE}/s (38x real time) for {seconds:g} s, then DELETE",
        "user_sees": f"{sent} frames accepted ({sent * 0.1 / seconds:.1f}x real time after backpressure); DELETE -> {end['end']['kind']} in {t_end - t_fault:.2f} s; "
                     + peak.text(),
        "end": end["end"]["kind"], "expected_end": "clean",
        "frames_sent": sent, "held_back_s": round(held_back, 2), "delete_s": round(t_end - t_fault, 3),
        "finals_on_disk": final_lines(end["out_dir"]), **peak.growth(),
    }
    return finish_row(row, left, t_fault)


async def row_many_connections(srv, counters, n: int = 150) -> dict:
    base = counters(await srv.resources())
    info, w = await push_session(srv)
    frame = b"\0\1" * (MiB // 2)
    codes: dict[str, int] = {}
    socks = []
    with Peak(srv.proc.pid, info["pid"]) as peak:
        async def one() -> None:
            try:
                ws = await srv.ws(info["id"])
            except Exception as exc:
                codes[type(exc).__name__] = codes.get(type(exc).__name__, 0) + 1
                return
            socks.append(ws)
            try:
                await ws.write_message(json.dumps({"type": "hello"}))
                for _ in range(5):
                    await asyncio.wait_for(ws.write_message(frame, binary=True), 10)
            except Exception:
                pass

        t0 = time.monotonic()
        await asyncio.gather(*(one() for _ in range(n)))
        await asyncio.sleep(1.0)
        for ws in socks:
            if ws.close_code is not None:
                codes[str(ws.close_code)] = codes.get(str(ws.close_code), 0) + 1
        admitted = sum(1 for ws in socks if ws.close_code is None)
        t_fault = time.monotonic()
        await asyncio.gather(*(close_ws(ws) for ws in socks))
        end = await srv.api("DELETE", f"sessions/{info['id']}")
    await w.aclose()
    left = await server_settle(srv, base, [info["pid"]], counters)
    row = {
        "fault": "150 connections", "mode": "server",
        "how": f"{n} WebSockets to one push session at once, each sending five 1 MiB frames after hello; then close all and DELETE",
        "user_sees": f"{admitted} admitted, refused: {codes or 'none'} (1013 = connection limit); one audio writer, others writer-busy; end {end['end']['kind']}; "
                     + peak.text(),
        "end": end["end"]["kind"], "expected_end": "clean", "admitted": admitted, "refused": codes,
        "flood_s": round(t_fault - t0, 2), **peak.growth(),
    }
    return finish_row(row, left, t_fault)


async def row_symlink_swap(srv, counters, tmp: Path) -> dict:
    shutil.copy(FIXTURES / "short.wav", srv.root / "swap.wav")
    outside = tmp / "outside.wav"
    shutil.copy(FIXTURES / "speech.wav", outside)
    base = counters(await srv.resources())
    t_fault = time.monotonic()
    info = await post(srv, {"source": {"kind": "file", "path": "swap.wav", "realtime": False}})
    (srv.root / "swap.wav").unlink()
    (srv.root / "swap.wav").symlink_to(outside)
    w = Watcher(srv, info["id"])
    await w.connect()
    await w.wait_closed()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await w.aclose()
    heard = set(re.findall(r"[a-z']+", " ".join(e["data"].get("text", "") for e in w.envs if e["type"] == "asr.final").lower()))
    inside = set(re.findall(r"[a-z']+", (FIXTURES / "short.txt").read_text().lower()))
    outside_only = set(re.findall(r"[a-z']+", (FIXTURES / "speech.txt").read_text().lower())) - inside
    (srv.root / "swap.wav").unlink()
    left = await server_settle(srv, base, [info["pid"]], counters)
    leaked = sorted(heard & outside_only)
    row = {
        "fault": "symlink swap", "mode": "server",
        "how": "POST a file inside root_dir, then at once replace it with a symlink to a file outside",
        "user_sees": f"captions of the file that was posted ({len(heard & inside)} of its words); outside-only words heard: {leaked or 'none'}",
        "end": end["end"]["kind"], "expected_end": "clean", "outside_words_heard": len(leaked),
        "finals_on_disk": final_lines(end["out_dir"]),
    }
    return finish_row(row, left, t_fault)


async def bench_abuse(tmp: Path, log, make_server, stop_server, counters, quick: bool) -> dict:
    rows = []
    srv = await make_server("abuse", {})
    try:
        for name, fn in (
            ("flooding client", lambda: row_flooding_client(srv, counters, 4.0 if quick else 20.0)),
            ("150 connections", lambda: row_many_connections(srv, counters)),
            ("symlink swap", lambda: row_symlink_swap(srv, counters, tmp)),
        ):
            await run_row(rows, log, name, fn, width=140)
    finally:
        await stop_server(srv)
    return {"rows": rows}
