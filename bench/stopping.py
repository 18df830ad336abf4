"""Section 1 of bench/run.py: how long a stop takes, ours against the references.

All six variants run interleaved (one of each per round) in this process, so a burst of
load on the shared machine hits every variant alike:

- ours, cooperative: `lx.session(lx.PushSource())`, wait for `status running`, time `s.stop()`;
- ours, a worker that ignores stop and SIGTERM (`faulty_worker.argv("hang", "ignore-sigterm")`)
  on a `Supervisor(grace, term_grace)`: time `await session.stop()` (ends `killed`);
- `jupyter_client.KernelManager.shutdown_kernel(now=False)` of a real ipykernel (ready first);
- the same with `now=True`;
- ipykernel's own exit: the same shutdown request (`KernelClient.shutdown()`), timed until the
  kernel process exits, waited on directly (`Popen.wait`), without jupyter_client's 0.1 s polling;
- `asyncio` subprocess `terminate()` + `wait()` of an idle Python child (the floor).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable

from measure import summary

import loquilex_nb as lx
from loquilex_nb.core.config import build_config
from loquilex_nb.testing import faulty_worker

ESC_GRACE = 0.5
ESC_TERM_GRACE = 0.5
RUNNING_TIMEOUT = 60.0
KERNEL_READY_TIMEOUT = 60.0
IDLE_CHILD = "import sys, time; sys.stdout.write('ready\\n'); sys.stdout.flush(); time.sleep(3600)"


def ours_cooperative(tmp: Path) -> dict:
    s = lx.session(lx.PushSource(), output_root=tmp)
    t0 = time.monotonic()
    out: dict = {}
    with s:
        for ev in s.events(timeout=RUNNING_TIMEOUT):
            if ev.type != "status":
                continue
            state = (ev.data or {}).get("state")
            if state == "starting":
                out["first_event_s"] = ev.t_mono - t0
            elif state == "running":
                out["running_s"] = ev.t_mono - t0
                out["running_received_s"] = time.monotonic() - t0
                out["model_load_s"] = ev.data.get("model_load_s", float("nan"))
                break
        else:
            raise RuntimeError(f"cooperative session never reached running: {s.end}")
        t = time.monotonic()
        end = s.stop()
        out["stop_s"] = time.monotonic() - t
        out["end"] = end.kind
        t = time.monotonic()
    out["close_s"] = time.monotonic() - t  # __exit__: reap, join tasks, stop the loop thread
    return out


async def _ours_escalated(tmp: Path) -> dict:
    sup = lx.Supervisor(grace=ESC_GRACE, term_grace=ESC_TERM_GRACE, worker_argv=faulty_worker.argv("hang", "ignore-sigterm"))
    try:
        sid = f"bench-esc-{uuid.uuid4().hex[:8]}"
        config = build_config(lx.PushSource(), sid=sid, output_root=tmp)
        session = await sup.create(config, sid=sid)
        deadline = time.monotonic() + RUNNING_TIMEOUT
        seq = 0
        while session.state != "running":
            if not session.alive or time.monotonic() > deadline:
                raise RuntimeError(f"hanging session never reached running: {session.end}")
            events, _ = await session.next_events(seq, 0.5)
            seq = events[-1].seq if events else seq
        t = time.monotonic()
        end = await session.stop()
        took = time.monotonic() - t
        await session.close()
        return {"stop_s": took, "end": end.kind, "detail": end.detail}
    finally:
        await sup.shutdown()


def ours_escalated(tmp: Path) -> dict:
    return asyncio.run(_ours_escalated(tmp))


def kernel(now: bool) -> dict:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    t0 = time.monotonic()
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # its TCP warning is noise here
    try:
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=KERNEL_READY_TIMEOUT)
        finally:
            kc.stop_channels()
        ready = time.monotonic() - t0
        pid = km.provisioner.process.pid if km.provisioner is not None else None
        t = time.monotonic()
        km.shutdown_kernel(now=now)
        took = time.monotonic() - t
    except BaseException:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        raise
    return {"stop_s": took, "ready_s": ready, "pid": pid}


def kernel_exit_direct() -> dict:
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name="python3")
    t0 = time.monotonic()
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    try:
        kc.start_channels()
        kc.wait_for_ready(timeout=KERNEL_READY_TIMEOUT)
        ready = time.monotonic() - t0
        proc = km.provisioner.process
        t = time.monotonic()
        kc.shutdown()  # the request shutdown_kernel(now=False) sends
        proc.wait(30)  # blocks in waitpid: the exit itself, no polling interval
        took = time.monotonic() - t
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)  # the process is gone; this releases jupyter_client's side
    return {"stop_s": took, "ready_s": ready, "pid": proc.pid}


async def _asyncio_terminate() -> dict:
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", IDLE_CHILD, stdout=asyncio.subprocess.PIPE)
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            raise RuntimeError(f"idle child said {line!r}")
        ready = time.monotonic() - t0
        t = time.monotonic()
        proc.terminate()
        code = await proc.wait()
        took = time.monotonic() - t
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return {"stop_s": took, "ready_s": ready, "code": code}


def asyncio_terminate() -> dict:
    return asyncio.run(_asyncio_terminate())


VARIANTS = ("ours_cooperative", "ours_ignores_sigterm", "jupyter_client_now_false", "jupyter_client_now_true", "kernel_exit_direct", "asyncio_terminate")


def _paired(a: list[float], b: list[float]) -> dict:
    ratios = [x / y for x, y in zip(a, b) if y]
    return {"median": summary(ratios)["p50"], "p50_ratio": (summary(a)["p50"] / summary(b)["p50"]) if a and b and summary(b)["p50"] else None, "samples": [round(r, 3) for r in ratios]}


def bench_stopping(n: int, tmp: Path, log: Callable[[str], None]) -> dict:
    runs: dict[str, list[dict]] = {k: [] for k in VARIANTS}
    calls = {
        "ours_cooperative": lambda: ours_cooperative(tmp),
        "ours_ignores_sigterm": lambda: ours_escalated(tmp),
        "jupyter_client_now_false": lambda: kernel(False),
        "jupyter_client_now_true": lambda: kernel(True),
        "kernel_exit_direct": kernel_exit_direct,
        "asyncio_terminate": asyncio_terminate,
    }
    for i in range(n):
        for key in VARIANTS:
            runs[key].append(calls[key]())
        if (i + 1) % 5 == 0 or i + 1 == n:
            log(f"  stop round {i + 1}/{n}: " + ", ".join(f"{k} {runs[k][-1]['stop_s'] * 1000:.0f} ms" for k in VARIANTS))
    stops = {k: [r["stop_s"] for r in v] for k, v in runs.items()}
    budget = ESC_GRACE + ESC_TERM_GRACE
    overhead = [x - budget for x in stops["ours_ignores_sigterm"]]
    coop = runs["ours_cooperative"]
    out: dict = {
        "n": n,
        "order": "interleaved: one of each variant per round",
        "escalation": {"grace_s": ESC_GRACE, "term_grace_s": ESC_TERM_GRACE},
        "variants": {},
        "ratios": {
            # ours ÷ reference, per round (same moment, same load), then the median
            "cooperative_vs_jupyter_client_now_false": _paired(stops["ours_cooperative"], stops["jupyter_client_now_false"]),
            "cooperative_vs_kernel_exit_direct": _paired(stops["ours_cooperative"], stops["kernel_exit_direct"]),
            "jupyter_client_now_false_vs_kernel_exit_direct": _paired(stops["jupyter_client_now_false"], stops["kernel_exit_direct"]),
            "cooperative_vs_asyncio_terminate": _paired(stops["ours_cooperative"], stops["asyncio_terminate"]),
            "jupyter_client_now_false_vs_asyncio_terminate": _paired(stops["jupyter_client_now_false"], stops["asyncio_terminate"]),
            "escalation_overhead_vs_jupyter_client_now_true": _paired(overhead, stops["jupyter_client_now_true"]),
            "escalation_overhead_vs_asyncio_terminate": _paired(overhead, stops["asyncio_terminate"]),
            "ignores_sigterm_vs_jupyter_client_now_false": _paired(stops["ours_ignores_sigterm"], stops["jupyter_client_now_false"]),
        },
        "startup": {
            "ours_first_event_s": summary([r["first_event_s"] for r in coop]),
            "ours_running_s": summary([r["running_s"] for r in coop]),
            "ours_running_received_s": summary([r["running_received_s"] for r in coop]),
            "ours_model_load_s": summary([r["model_load_s"] for r in coop]),
            "ipykernel_ready_s": summary([r["ready_s"] for r in runs["jupyter_client_now_false"] + runs["jupyter_client_now_true"]]),
            "idle_python_ready_s": summary([r["ready_s"] for r in runs["asyncio_terminate"]]),
        },
        "close_after_stop_s": summary([r["close_s"] for r in coop]),
    }
    for key in VARIANTS:
        entry = {"latency_s": summary(stops[key]), "samples_s": [round(x, 4) for x in stops[key]]}
        ends = Counter(r.get("end") for r in runs[key] if r.get("end"))
        if ends:
            entry["end_kinds"] = dict(ends)
        out["variants"][key] = entry
    out["variants"]["ours_ignores_sigterm"]["overhead_s"] = summary(overhead)
    out["variants"]["ours_ignores_sigterm"]["all_killed"] = runs["ours_ignores_sigterm"] and all(r["end"] == "killed" for r in runs["ours_ignores_sigterm"])
    out["variants"]["asyncio_terminate"]["exit_codes"] = dict(Counter(str(r["code"]) for r in runs["asyncio_terminate"]))
    out["startup"]["ours_running_vs_ipykernel_ready"] = _paired([r["running_s"] for r in coop], [r["ready_s"] for r in runs["jupyter_client_now_false"]])
    return out


if __name__ == "__main__":  # this section alone: .venv/bin/python bench/stopping.py [N]
    import json
    import tempfile

    os.environ.setdefault("LOQUILEX_MODE", "embedded")
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(bench_stopping(int(sys.argv[1]) if len(sys.argv) > 1 else 3, Path(d), print), indent=2))
