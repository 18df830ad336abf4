"""JupyterHub figures for bench/run.py: the hub's proxy against direct, and hub stops.

A real hub on 127.0.0.1 (deploy/jupyterhub/localhub.py: SimpleLocalProcessSpawner,
DummyAuthenticator, configurable-http-proxy from the project's lockfile), users u1..u4:
- final-caption latency (bench/server.py's `bench_latency`) and replay events/s
  (`fan_round`) for the same server, through the proxy and directly to its port;
- 4 users x 2 push sessions, a WebSocket client on each: DELETE /hub/api/users/<u>/server
  → last worker gone and server gone; then hub SIGTERM → every session ended, nothing left.

    .venv/bin/python bench/hub.py [--quick]     # this section alone, JSON on stdout
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import REPO, summary  # noqa: E402
from fanout import fan_round  # noqa: E402
from latency import bench_latency  # noqa: E402
from server import SPEECH, ServerClient as Route  # noqa: E402

from loquilex_nb.testing.jupyter import ONLY_LOQUILEX  # noqa: E402

sys.path.insert(0, str(REPO / "deploy" / "jupyterhub"))
from localhub import LocalHub  # noqa: E402

USERS = ["u1", "u2", "u3", "u4"]
SESSIONS_PER_USER = 2


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def _wait_gone(pids: list[int], t0: float, timeout: float = 60.0) -> float | None:
    """Seconds from t0 until every pid is gone (None if some outlived the timeout)."""
    while any(_alive(p) for p in pids):
        if time.monotonic() - t0 > timeout:
            return None
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def _wait_running(route: Route, sid: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (await route.api("GET", f"sessions/{sid}"))["state"] != "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {sid} not running after {timeout:.0f} s")
        await asyncio.sleep(0.1)


async def _watch(ws, via: str) -> dict:
    """Read a session's socket to its close; the eos end kind and the close code."""
    kind = None
    while (msg := await ws.read_message()) is not None:
        env = json.loads(msg)
        if env["type"] == "eos":
            kind = env["data"]["data"]["end"]["kind"]
    return {"via": via, "end": kind, "close": ws.close_code}


def _tally(watched: list[dict], key: str) -> dict:
    return dict(Counter(f"{w['via']}: {w[key]}" for w in watched))


async def _replay_rate(route: Route, sid: str, rounds: int) -> dict:
    rates = []
    for _ in range(rounds):
        r = await fan_round(lambda: route.ws(sid), 1)
        rates.append(r["frames"] / r["wall"])
    return {"events": r["frames"], "events_per_s": summary(rates)}


async def proxy_vs_direct(hub: LocalHub, quick: bool, log: Callable) -> dict:
    token = hub.user_token("u1")
    proxy = Route(hub.url(hub.prefix("u1")), token)
    direct = Route(hub.server_process("u1").environ()["JUPYTERHUB_SERVICE_URL"], token)
    wav = SPEECH  # short.wav has one utterance, whose final may come only after the stop
    out: dict = {"file": str(wav.relative_to(REPO)), "direct_base": direct.base.split("/lx/")[0], "proxy_base": proxy.base.split("/lx/")[0]}
    try:
        for name, route in (("direct", direct), ("proxy", proxy)):
            lat = await bench_latency(route, lambda m, n=name: log(f"  {n}:{m}"), wav)
            out[name] = {"latency": {k: lat[k] for k in ("finals", "e2e_s", "worker_latency_s", "delivery_s", "close")}}
        # an ended non-realtime session holds every event for replay: read it all, both ways
        home = Path(hub.server_process("u1").environ()["HOME"])
        shutil.copy(SPEECH, home / "speech.wav")
        info = await direct.api("POST", "sessions", {"source": {"kind": "file", "path": "speech.wav", "realtime": False}, "formats": ["txt"]})
        await direct.wait_ended(info["id"])
        rounds = 2 if quick else 5
        for name, route in (("direct", direct), ("proxy", proxy)):
            out[name]["replay"] = await _replay_rate(route, info["id"], rounds)
        d, p = out["direct"], out["proxy"]
        out["proxy_minus_direct_e2e_p50_s"] = _diff(p["latency"]["e2e_s"]["p50"], d["latency"]["e2e_s"]["p50"])
        out["proxy_over_direct_events_per_s"] = _ratio(p["replay"]["events_per_s"]["p50"], d["replay"]["events_per_s"]["p50"])
        log(f"  e2e p50 direct {d['latency']['e2e_s']['p50']} s, proxy {p['latency']['e2e_s']['p50']} s; "
            f"replay {d['replay']['events_per_s']['p50']:.0f} vs {p['replay']['events_per_s']['p50']:.0f} events/s")
    finally:
        proxy.http.close()
        direct.http.close()
    return out


def _diff(a, b):
    return None if a is None or b is None else round(a - b, 4)


def _ratio(a, b):
    return None if not a or not b else round(a / b, 3)


async def stops(hub: LocalHub, log: Callable) -> dict:
    """2 push sessions per user with a client each; DELETE one user's server; then hub SIGTERM."""
    routes, workers, watchers, sids = {}, {}, {}, []
    for user in USERS:
        token = hub.user_token(user)
        routes[user] = Route(hub.url(hub.prefix(user)), token)
        direct = Route(hub.server_process(user).environ()["JUPYTERHUB_SERVICE_URL"], token)
        routes[user + "-direct"] = direct
        workers[user], watchers[user] = [], []
        for i in range(SESSIONS_PER_USER):
            info = await routes[user].api("POST", "sessions", {"source": {"kind": "push"}, "formats": ["txt"]})
            # one client through the proxy, one direct: a hub SIGTERM stops its proxy at once
            via = "proxy" if i % 2 == 0 else "direct"
            ws = await (routes[user] if via == "proxy" else direct).ws(info["id"])
            await ws.write_message(json.dumps({"type": "hello"}))
            workers[user].append(info["pid"])
            sids.append((user, info["id"]))
            watchers[user].append(asyncio.create_task(_watch(ws, via)))
    try:
        for user, sid in sids:  # every worker has loaded its model: a stop is then a real one
            await _wait_running(routes[user], sid)
        # what an operator sizes a pod by: each worker's memory, and its server's
        worker_rss = [psutil.Process(p).memory_info().rss / 2**20 for u in USERS for p in workers[u]]
        server_rss = [hub.server_process(u).memory_info().rss / 2**20 for u in USERS]
        user = USERS[-1]
        server = hub.server_process(user)
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, hub.delete_server, user)
        workers_gone = await _wait_gone(workers[user], t0)
        server_gone = await _wait_gone([server.pid], t0)
        deleted = [await w for w in watchers[user]]
        log(f"  DELETE {user}'s server: workers gone after {workers_gone} s, server after {server_gone} s; {deleted}")
        rest = [u for u in USERS if u != user]
        pids = [p for u in rest for p in workers[u]]
        hub.remember()
        t0 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, hub.stop)
        hub_exit = time.monotonic() - t0
        everything = await _wait_gone([p.pid for p in hub.survivors()], t0, 30)
        ended = [await w for u in rest for w in watchers[u]]
        left = [(p.pid, " ".join(p.cmdline()[:3])) for p in hub.survivors()]
        log(f"  hub SIGTERM: exit after {hub_exit:.2f} s, {len(pids)} sessions {_tally(ended, 'end')}, left {left}")
        return {
            "users": len(USERS), "sessions_per_user": SESSIONS_PER_USER,
            "worker_rss_mib": summary(worker_rss), "server_rss_mib": summary(server_rss),
            "delete_server": {"user": user, "workers_gone_s": _r(workers_gone), "server_gone_s": _r(server_gone),
                              "ends": _tally(deleted, "end"), "closes": _tally(deleted, "close")},
            "hub_sigterm": {"sessions": len(pids), "hub_exit_s": round(hub_exit, 3), "all_gone_s": _r(everything),
                            "ends": _tally(ended, "end"), "closes": _tally(ended, "close"),
                            "processes_left": left},
        }
    finally:
        for ws_tasks in watchers.values():
            for t in ws_tasks:
                t.cancel()
        for r in routes.values():
            r.http.close()


def _r(x):
    return None if x is None else round(x, 3)


async def bench_hub(tmp: Path, quick: bool, log: Callable) -> dict:
    hub = LocalHub(tmp / "hub", USERS, base_url="/lx/", args=[ONLY_LOQUILEX, "--LoquilexApp.max_sessions=8"])
    t0 = time.monotonic()
    try:
        await asyncio.get_running_loop().run_in_executor(None, hub.start)
        started = time.monotonic() - t0
        t1 = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, lambda: hub.start_servers(*((u, "") for u in USERS)))
        spawned = time.monotonic() - t1
        log(f"  hub up in {started:.1f} s, {len(USERS)} servers ready {spawned:.1f} s later")
        out = {"hub_start_s": round(started, 2), "servers_start_s": round(spawned, 2)}
        out["proxy_vs_direct"] = await proxy_vs_direct(hub, quick, log)
        out["stops"] = await stops(hub, log)
        return out
    finally:
        hub.kill()


async def hub_section(tmp: Path, quick: bool, log: Callable) -> dict:
    """For bench/run.py: never raises, a failure is reported in the results."""
    t = time.monotonic()
    try:
        out = await bench_hub(tmp, quick, log)
    except Exception as exc:
        log(f" part 'hub' FAILED: {exc!r}")
        out = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    out["elapsed_s"] = round(time.monotonic() - t, 1)
    return out


# -- report (bench/report.py calls these) -------------------------------------------------------
HUB_HEAD = ["figure", "through the hub's proxy", "direct to the server", "proxy − direct / ÷ direct"]


def hub_rows(h: dict) -> list[list[str]]:
    pd = h["proxy_vs_direct"]
    p, d = pd["proxy"], pd["direct"]
    rows = []
    for q in ("p50", "p90"):
        rows.append([f"final latency {q} (end of utterance → event at the client)", f"{p['latency']['e2e_s'][q]:.3f} s", f"{d['latency']['e2e_s'][q]:.3f} s",
                     f"{p['latency']['e2e_s'][q] - d['latency']['e2e_s'][q]:+.3f} s" if p['latency']['e2e_s'][q] is not None and d['latency']['e2e_s'][q] is not None else "–"])
    rows.append(["replay events/s p50, one client", f"{p['replay']['events_per_s']['p50']:.0f}", f"{d['replay']['events_per_s']['p50']:.0f}", f"{pd['proxy_over_direct_events_per_s']}×"])
    return rows


def hub_markdown(h: dict, table: Callable) -> str:
    if "error" in h:
        return f"## 7. JupyterHub\n\nFAILED: {h['error']}"
    st = h["stops"]
    ds, hs = st["delete_server"], st["hub_sigterm"]
    return "\n\n".join([
        "## 7. JupyterHub",
        table(HUB_HEAD, hub_rows(h)),
        f"- a real hub on 127.0.0.1 (deploy/jupyterhub/jupyterhub_config.py via localhub.py, SimpleLocalProcessSpawner, "
        f"configurable-http-proxy, base_url `/lx/`), {st['users']} users; hub up in {h['hub_start_s']} s, their servers ready "
        f"{h['servers_start_s']} s later. Latency: bench/server.py's end-to-end run (`{h['proxy_vs_direct']['file']}` pushed in real "
        "time) on the same single-user server, once directly to its port and once through the proxy, both with the user's hub token. "
        "Replay: every event of an ended non-realtime session on speech.wav read by one client, alternately both ways.",
        f"- **{st['users']} users × {st['sessions_per_user']} push sessions**, a WebSocket client on each, every worker running "
        f"(worker RSS p50 {st['worker_rss_mib']['p50']:.0f} MiB, max {st['worker_rss_mib']['max']:.0f} MiB; single-user server RSS p50 "
        f"{st['server_rss_mib']['p50']:.0f} MiB).",
        f"- `DELETE /hub/api/users/{ds['user']}/server` (the spawner's SIGINT): its last worker gone after **{ds['workers_gone_s']} s**, "
        f"the server after {ds['server_gone_s']} s; its sessions ended {ds['ends']}, sockets closed {ds['closes']}.",
        f"- hub SIGTERM with the other {hs['sessions']} sessions running (per user one client through the proxy, one direct to "
        "the server's port: the hub stops its proxy at the same moment as the servers, so proxied sockets are cut before `eos`): "
        f"hub exited after {hs['hub_exit_s']} s, every process it "
        f"started gone after {hs['all_gone_s']} s; sessions ended {hs['ends']}, sockets closed {hs['closes']}; "
        f"processes left: {len(hs['processes_left'])}.",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[hub {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="loquilex-bench-hub-") as tmp:
        result = asyncio.run(bench_hub(Path(tmp), args.quick, log))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
