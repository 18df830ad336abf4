"""PNG figures for docs/BENCHMARKS.md (matplotlib, Agg). Each returns None when its data is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
OURS = "#1f77b4"
REF = "#ff7f0e"
REF2 = "#2ca02c"
GREY = "#7f7f7f"

STOP_LABELS = {
    "ours_cooperative": "ours: cooperative worker",
    "ours_ignores_sigterm": "ours: worker ignores stop + SIGTERM",
    "jupyter_client_now_false": "jupyter_client shutdown_kernel(now=False)",
    "jupyter_client_now_true": "jupyter_client shutdown_kernel(now=True)",
    "asyncio_terminate": "asyncio terminate() + wait(), idle child",
}


def _ok(part) -> bool:
    return isinstance(part, dict) and "error" not in part


def _save(fig, path: Path) -> bool:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def stop_latency(r: dict, path: Path) -> bool:
    s = r.get("stopping")
    if not _ok(s):
        return False
    keys = list(STOP_LABELS)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    rng = np.random.default_rng(0)
    for i, k in enumerate(keys):
        xs = np.asarray(s["variants"][k]["samples_s"]) * 1000
        color = OURS if k.startswith("ours") else REF
        ax.scatter(xs, i + rng.uniform(-0.15, 0.15, len(xs)), s=14, alpha=0.7, color=color)
        lat = s["variants"][k]["latency_s"]
        ax.plot([lat["p50"] * 1000] * 2, [i - 0.3, i + 0.3], color="black", lw=2)
        ax.plot([lat["p99"] * 1000] * 2, [i - 0.25, i + 0.25], color="black", lw=1, ls=":")
    ax.set_yticks(range(len(keys)), [STOP_LABELS[k] for k in keys])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("stop latency (ms, log scale) — bar: p50, dotted: p99")
    g = s["escalation"]
    ax.set_title(f"Stop latency, {s['n']} interleaved rounds (ours escalating: grace {g['grace_s']:g} s + term_grace {g['term_grace_s']:g} s)", fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    return _save(fig, path)


def _cdf(ax, values, label, color, ls="-") -> None:
    v = np.sort(np.asarray(values, dtype=float))
    if len(v):
        ax.step(np.r_[v[0], v] * 1000, np.r_[0.0, np.arange(1, len(v) + 1) / len(v)], where="post", label=f"{label} (n={len(v)})", color=color, ls=ls, marker="o", ms=3)


def final_latency(r: dict, path: Path) -> bool:
    a = r.get("asr")
    if not _ok(a):
        return False
    worker, client, intervals = [], [], []
    for x in a["realtime"].values():
        worker += [f["worker_s"] for f in x.get("per_final", [])]
        client += [f["client_s"] for f in x.get("per_final", [])]
        intervals += x.get("partial_interval_samples_s", [])
    lat = a.get("server_latency")
    server = [f["e2e_s"] for f in lat.get("per_final", []) if not f.get("after_stop")] if _ok(lat) else []
    if not (worker or server):
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    _cdf(ax1, worker, "worker: last audio → final emitted", GREY, "--")
    _cdf(ax1, client, "embedded: last audio → event at the handle", OURS)
    _cdf(ax1, server, "server: chunk sent → final at the WebSocket client", REF)
    ax1.axvline(450, color=GREY, lw=0.8, ls=":")
    ax1.text(455, 0.03, "vad_silence 0.45 s", fontsize=7, color=GREY)
    ax1.set_xlabel("final-caption latency (ms)")
    ax1.set_ylabel("fraction of finals ≤ x")
    ax1.set_title("Final-caption latency (realtime)", fontsize=10)
    ax1.legend(fontsize=7, loc="upper left")
    ax1.grid(alpha=0.3)
    if intervals:
        ax2.hist(np.asarray(intervals) * 1000, bins=30, color=OURS, alpha=0.8)
        ax2.axvline(400, color="black", ls="--", lw=1, label="partial_interval 0.4 s")
        ax2.legend(fontsize=7)
    ax2.set_xlabel("time between consecutive partials of one utterance (ms)")
    ax2.set_ylabel("count")
    ax2.set_title("Partial cadence at the handle (realtime)", fontsize=10)
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def fanout(r: dict, path: Path) -> bool:
    f = (r.get("fanout") or {}).get("throughput")
    if not _ok(f):
        return False
    ns = list(f["clients"])
    x = np.arange(len(ns))
    w = 0.27
    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = [("ours", "ours (jupyter server + loquilex)", OURS), ("bare_thread", "bare Tornado sender, thread", REF), ("bare_process", "bare Tornado sender, process", REF2)]
    for i, (k, label, color) in enumerate(series):
        vals = [f["clients"][n][k]["events_per_s"] for n in ns]
        ax.bar(x + (i - 1) * w, vals, w, label=label, color=color)
    for j, n in enumerate(ns):
        ratio = f["clients"][n]["ratio_vs_bare_process"]
        top = max(f["clients"][n][k]["events_per_s"] for k, _, _ in series)
        ax.text(x[j], top * 1.02, f"{ratio:.2f}× of bare process", ha="center", fontsize=8)
    ax.set_xticks(x, [f"{n} client" + ("s" if n != "1" else "") for n in ns])
    ax.set_ylabel("events/s delivered (all clients)")
    ax.set_title("WebSocket fan-out throughput (median of rounds)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def stall_rss(r: dict, path: Path) -> bool:
    st = (r.get("fanout") or {}).get("stalled_client")
    if not _ok(st):
        return False
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for key, label, color in (("stalled", "with a stalled client", OURS), ("control", "control: no stalled client", GREY)):
        run = st["runs"].get(key)
        if not run:
            continue
        t = [p["t_s"] for p in run["rss_curve"]]
        m = [p["rss"] / 2**20 for p in run["rss_curve"]]
        ax.plot(t, m, marker="o", ms=3, label=f"server RSS, {label}", color=color)
    run = st["runs"]["stalled"]
    ev = run.get("events_published_at_s") or []
    if ev:
        ax2 = ax.twinx()
        ax2.plot([e[0] for e in ev], [e[1] for e in ev], color=REF2, lw=1, alpha=0.6, label="events published (seq)")
        ax2.set_ylabel("session events (seq)", color=REF2)
    lo, hi = ax.get_ylim()
    mid = (lo + hi) / 2
    if hi - lo < 8:  # a flat line should look flat, not like noise blown up
        ax.set_ylim(mid - 4, mid + 4)
    ax.yaxis.get_major_formatter().set_useOffset(False)
    cut = run.get("cut") or {}
    if cut.get("socket_released_at_s") is not None and cut.get("cut_before_eos"):
        ax.axvline(cut["socket_released_at_s"], color="red", ls="--", lw=1)
        ax.text(cut["socket_released_at_s"], ax.get_ylim()[0], " socket released", color="red", fontsize=8, va="bottom")
        if cut.get("overflow_at_s_estimate") is not None:
            ax.axvline(cut["overflow_at_s_estimate"], color="red", ls=":", lw=1)
            ax.text(cut["overflow_at_s_estimate"], ax.get_ylim()[1], f" queue full ({st['send_queue_limit']}) → 4008", color="red", fontsize=8, va="top")
    ax.set_xlabel("seconds since the session was created")
    ax.set_ylabel("jupyter server RSS (MiB)")
    ax.set_title(f"Server memory with one stalled client (send_queue_limit={st['send_queue_limit']})", fontsize=10)
    handles = [h for h in ax.get_lines() + (ax2.get_lines() if ev else []) if not h.get_label().startswith("_")]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def scale(r: dict, path: Path) -> bool:
    s = (r.get("scale") or {}).get("sessions")
    if not _ok(s):
        return False
    ns = list(s["sizes"])
    x = np.arange(len(ns))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = ("fds", "sockets", "tasks", "threads")
    w = 0.2
    for i, k in enumerate(keys):
        ax1.bar(x + (i - 1.5) * w, [s["sizes"][n]["per_session"][k] for n in ns], w, label=k)
    ax1.set_xticks(x, [f"{n} sessions" for n in ns])
    ax1.set_ylabel("per session (server process)")
    ax1.set_title("Server resources per session", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)
    base = s["idle_no_sessions"]["server_cpu_pct"]
    ax2.plot([0] + [int(n) for n in ns], [base] + [s["sizes"][n]["idle"]["server_cpu_pct"] for n in ns], marker="o", color=OURS, label="jupyter server process (workers excluded)")
    ax2.axhline(base, color=GREY, ls=":", lw=1, label="same server, no session")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("idle push sessions")
    ax2.set_ylabel("% of one core")
    ax2.set_title(f"Supervisor CPU while sessions idle ({s['idle_s']:g} s windows)", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def cycles_rss(r: dict, path: Path) -> bool:
    c = (r.get("scale") or {}).get("cycles")
    if not _ok(c) or len(c.get("curve", [])) < 2:
        return False
    fig, ax = plt.subplots(figsize=(8, 3.6))
    xs = [p["cycles"] for p in c["curve"]]
    ax.plot(xs, [p["rss"] / 2**20 for p in c["curve"]], marker="o", ms=3, color=OURS, label="server RSS")
    ax.set_xlabel("create/stop cycles")
    ax.set_ylabel("jupyter server RSS (MiB)")
    ax2 = ax.twinx()
    ax2.plot(xs, [p["fds"] for p in c["curve"]], color=REF, lw=1, label="server fds")
    ax2.plot(xs, [p["threads"] for p in c["curve"]], color=REF2, lw=1, label="server threads")
    ax2.set_ylabel("fds / threads")
    ax2.set_ylim(0, max(p["fds"] for p in c["curve"]) * 1.5 + 1)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=8, loc="lower right")
    ax.set_title(f"{c['cycles']} REST create/stop cycles ({c['in_flight']} in flight)", fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def faults(r: dict, path: Path) -> bool:
    f = r.get("faults")
    if not _ok(f):
        return False
    rows = [x for x in f["rows"] if x.get("time_to_clean_s") is not None]
    if not rows:
        return False
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(rows) + 1.4))
    labels = [f"{x['fault']} ({x.get('mode', '?')})" for x in rows]
    vals = [max(x["time_to_clean_s"], 1e-3) * 1000 for x in rows]
    colors = [OURS if x.get("resources_left_total") == 0 else "red" for x in rows]
    ax.barh(range(len(rows)), vals, color=colors)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("fault → clean state (ms, log scale); red bar: resources left")
    ax.set_title("Fault matrix: time to clean", fontsize=10)
    ax.grid(axis="x", which="both", alpha=0.3)
    return _save(fig, path)


PLOTS: dict[str, Callable[[dict, Path], bool]] = {
    "stop_latency": stop_latency,
    "final_latency": final_latency,
    "fanout": fanout,
    "stall_rss": stall_rss,
    "scale": scale,
    "cycles_rss": cycles_rss,
    "faults": faults,
}


def make_plots(results: dict, img_dir: Path) -> dict:
    """Writes img_dir/<name>.png; returns {name: "img/<name>.png"} for the ones drawn, errors by name."""
    img_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {}
    for name, fn in PLOTS.items():
        path = img_dir / f"{name}.png"
        try:
            if fn(results, path):
                out[name] = f"img/{name}.png"
        except Exception as exc:  # one broken figure must not lose the others
            out[f"{name}_error"] = f"{type(exc).__name__}: {exc}"
            plt.close("all")
    return out


if __name__ == "__main__":  # redraw from a results file: .venv/bin/python bench/plots.py results.json OUTDIR/img
    import json
    import sys

    print(make_plots(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])))
