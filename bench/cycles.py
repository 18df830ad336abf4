"""REST create/stop cycles, with the server's counters before/after and an RSS curve."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Callable

from measure import summary
from server import SESSION_TIMEOUT, SETTLE_S, JupyterServer, counters, delta, settle_to

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
