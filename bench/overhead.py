"""Per-session server overhead (fds, sockets, tasks, threads, RSS) and idle CPU with N push sessions."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from typing import Any, Callable

import psutil
from server import (
    SESSION_TIMEOUT,
    SETTLE_S,
    JupyterServer,
    close_after_eos,
    counters,
    cpu_s,
    delta,
    settle_to,
)


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
