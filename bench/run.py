"""Benchmarks of loquilex-nb, each figure next to the reference it is compared with (not tests).

    .venv/bin/python bench/run.py                 # make bench: full sizes, under 15 min on 2 cores
    .venv/bin/python bench/run.py --quick         # make bench-quick: the same code on small sizes
    .venv/bin/python bench/run.py --quick --out DIR   # everything into DIR, nothing else touched

Sections: 1. stopping (ours against jupyter_client's KernelManager.shutdown_kernel and a plain
asyncio terminate/wait), 2. streaming ASR (against one batch faster-whisper transcribe),
3. fan-out (against a bare Tornado WebSocket sender) and server memory with a stalled client,
4. scale (10/25/50 sessions, idle supervisor CPU, 1000 create/stop cycles), 5. the fault matrix.

Writes: OUT/results.json and OUT/logs/ (the jupyter servers' logs) (OUT = bench-out/ or --out). A full run without --out also publishes
docs/BENCHMARKS.md, docs/benchmarks.json and docs/img/*.png; a quick run (or one with --out)
writes BENCHMARKS.md and img/ into OUT instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LOQUILEX_MODE", "embedded")  # the bench's own sessions never go to a server
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# as in a worker (supervisor/session.py): numpy's OpenBLAS spin-waits a thread per core, and
# the in-process recogniser (sim, costs) would count that CPU as decoding
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from abuse import bench_abuse  # noqa: E402
from asr import bench_asr  # noqa: E402
from cycles import bench_cycles  # noqa: E402
from fanout import bench_fanout  # noqa: E402
from faults import bench_faults  # noqa: E402
from floor import run as floor_run  # noqa: E402
from hub import hub_section  # noqa: E402
from labext import bench_labext  # noqa: E402
from latency import bench_latency  # noqa: E402
from live import run as live_run  # noqa: E402
from longaudio import make_long  # noqa: E402
from measure import REPO, concat_wav, machine  # noqa: E402
from overhead import bench_overhead  # noqa: E402
from report import render_markdown, render_text, update_readme  # noqa: E402
from server import SAMPLE, SPEECH, JupyterServer, counters, settle_to  # noqa: E402
from spread import run as spread_run  # noqa: E402
from stall import bench_stall  # noqa: E402
from stopping import bench_stopping  # noqa: E402

SHORT = REPO / "tests" / "fixtures" / "short.wav"
BUDGET_S = {"full": 13 * 60.0, "quick": 90.0}  # the cycles stop early to keep the whole run inside
CYCLES_RESERVE_S = 20.0  # settle + server shutdown + plots after the cycles
MIN_CYCLES = {"full": 100, "quick": 10}  # run at least these, whatever the budget says

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "stop_rounds": 20,
        "asr_files": [SPEECH, SAMPLE],
        "realtime_files": [SPEECH, SAMPLE],
        "asr_repeats": 3,
        "latency_file": SPEECH,
        "stall_seconds": 30.0,
        "stall_parts": [SPEECH, SAMPLE] * 8,
        "stall_control": True,
        "send_queue_limit": 100,
        "scale_sizes": (10, 25, 50),
        "idle_s": 10.0,
        "cycles": 1000,
        "cycles_every": 50,
    },
    "quick": {
        "stop_rounds": 2,
        "asr_files": [SPEECH],
        "realtime_files": [SHORT],
        "asr_repeats": 1,
        "latency_file": SHORT,
        "stall_seconds": 6.0,
        "stall_parts": [SPEECH, SAMPLE] * 2,
        "stall_control": False,
        "send_queue_limit": 16,
        "scale_sizes": (2, 3),
        "idle_s": 1.0,
        "cycles": 10,
        "cycles_every": 5,
    },
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


async def server_sections(mode: str, cfg: dict, tmp: Path, results: dict, timings: dict, deadline: float, logs: Path) -> None:
    quick = mode == "quick"
    shutdowns: dict[str, dict] = {}
    results["servers"] = shutdowns

    async def make_server(name: str, extra: dict, env: dict | None = None) -> JupyterServer:
        root = tmp / f"root-{name}"
        root.mkdir(parents=True, exist_ok=True)
        srv = JupyterServer(root, name, extra, env, keep_log=logs)
        try:
            await srv.start()
        except BaseException:
            await stop_server(srv)
            raise
        log(f" jupyter server '{name}' up in {srv.started_s:.2f} s on 127.0.0.1:{srv.port}")
        return srv

    async def stop_server(srv: JupyterServer) -> None:
        srv.http.close()
        info = await asyncio.get_running_loop().run_in_executor(None, srv.stop)
        info["start_s"] = None if srv.started_s is None else round(srv.started_s, 2)
        shutdowns[srv.name] = info

    async def part(name: str, fn: Callable[[], Awaitable[dict]]) -> dict:
        t = time.monotonic()
        try:
            out = await fn()
        except Exception as exc:  # one failed part must not lose the rest of the bench
            log(f" part '{name}' FAILED: {exc!r}")
            out = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        out["elapsed_s"] = round(time.monotonic() - t, 1)
        timings[name] = out["elapsed_s"]
        return out

    # 3. fan-out and the stalled client share one server
    log("3. fan-out: replay to 1/4/16 clients, then server memory with a stalled client")
    srv = await make_server("fanout", {"replay_capacity": 100000, "replay_window": 600.0, "send_queue_limit": cfg["send_queue_limit"]})
    try:
        throughput = await part("fanout", lambda: bench_fanout(srv, tmp, quick, log))
        stall = await part("stalled_client", lambda: bench_stall(srv, cfg["stall_seconds"], cfg["stall_parts"], cfg["stall_control"], log, settle_to, counters, concat_wav))
    finally:
        await stop_server(srv)
    results["fanout"] = {"throughput": throughput, "stalled_client": stall}

    # 2 (server part) and 4: end-to-end latency, then per-session overhead and idle CPU
    log(f"2./4. server: end-to-end latency on {rel(cfg['latency_file'])}, then {cfg['scale_sizes']} idle sessions")
    srv = await make_server("scale", {})
    try:
        results["asr"]["server_latency"] = await part("server_latency", lambda: bench_latency(srv, log, cfg["latency_file"]))
        sessions = await part("scale", lambda: bench_overhead(srv, cfg["scale_sizes"], log, cfg["idle_s"]))
    finally:
        await stop_server(srv)
    results["scale"] = {"sessions": sessions}

    # 5. the fault matrix
    log("5. fault matrix")
    ftmp = tmp / "faults"
    ftmp.mkdir()
    results["faults"] = await part("faults", lambda: bench_faults(ftmp, log, make_server, stop_server, counters, None if "error" in stall else stall))
    abuse = await part("abuse", lambda: bench_abuse(ftmp, log, make_server, stop_server, counters, quick))
    if "rows" in results["faults"]:  # hostile clients (issue 9): rows of the same matrix
        results["faults"]["rows"] += abuse.get("rows") or [{"fault": "abuse rows", "error": abuse.get("error", "?"), "resources_left_total": None}]
        results["faults"]["all_clean"] = all(r.get("resources_left_total") == 0 for r in results["faults"]["rows"])

    # 4. create/stop cycles with what is left of the budget
    target = cfg["cycles"]
    log(f"4. create/stop cycles x{target} (budget: the run ends by {deadline - time.monotonic() + CYCLES_RESERVE_S:.0f} s from now)")
    srv = await make_server("cycles", {})
    try:
        results["scale"]["cycles"] = await part("cycles", lambda: bench_cycles(srv, target, deadline - CYCLES_RESERVE_S, log, every=cfg["cycles_every"], at_least=MIN_CYCLES[mode]))
    finally:
        await stop_server(srv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (make bench-quick, tests/test_bench_quick.py)")
    parser.add_argument("--out", type=Path, default=None, help="write results.json, BENCHMARKS.md and img/ here, and nothing anywhere else")
    parser.add_argument("--no-docs", action="store_true", help="full run: do not publish into docs/")
    parser.add_argument("--hub", action="store_true", help="quick run: include the JupyterHub section (a full run always does)")
    args = parser.parse_args(argv)

    mode = "quick" if args.quick else "full"
    cfg = dict(SIZES[mode])
    if mode == "full":
        # longer than batch_window, so streaming is not batch in disguise; made now, not committed
        cfg["asr_files"] = [make_long(REPO / "bench-out"), *cfg["asr_files"]]
    out = (args.out or REPO / "bench-out").resolve()
    publish = args.out is None and not args.quick and not args.no_docs
    page_dir = REPO / "docs" if publish else out

    started = time.monotonic()
    deadline = started + BUDGET_S[mode]
    results: dict = {
        "schema": 2,
        "mode": mode,
        "machine": machine(),
        "sizes": {k: ([rel(p) for p in v] if isinstance(v, list) and v and isinstance(v[0], Path) else rel(v) if isinstance(v, Path) else v) for k, v in cfg.items()},
        "budget_s": BUDGET_S[mode],
    }
    timings: dict[str, float] = {}
    results["timings_s"] = timings
    with tempfile.TemporaryDirectory(prefix="loquilex-bench-") as tmpdir:
        tmp = Path(tmpdir)
        os.environ["JUPYTER_RUNTIME_DIR"] = str(tmp / "runtime-bench")  # the bench's own kernels' connection files
        t = time.monotonic()
        log(f"1. stopping: {cfg['stop_rounds']} interleaved rounds of ours / jupyter_client / asyncio")
        results["stopping"] = bench_stopping(cfg["stop_rounds"], tmp, log)
        timings["stopping"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        log("2. streaming ASR against batch transcribe")
        results["asr"] = bench_asr(cfg["asr_files"], cfg["realtime_files"], cfg["asr_repeats"], tmp, log)
        timings["asr"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        log("2b. live captions in a room (bench/live.py)")
        try:
            results["live"] = live_run(quick=mode == "quick", sim=mode == "quick", sets=["harvard"] if mode == "quick" else ["harvard", "tuned"], log=log)
        except Exception as exc:  # one failed part must not lose the rest of the bench
            results["live"] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        timings["live"] = round(time.monotonic() - t, 1)
        if mode == "full":  # ~8 + ~16 min of decodes: not in bench-quick
            for key, title, part in (
                ("floor", "the model's floor under the latency bounds (bench/floor.py)", floor_run),
                ("spread", "how far the room figures move with the audio's start (bench/spread.py)", spread_run),
            ):
                t = time.monotonic()
                log(f"2b. {title}")
                try:
                    results[key] = part(log=log)
                except Exception as exc:
                    results[key] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                timings[key] = round(time.monotonic() - t, 1)
        if not args.quick or args.hub:  # before the server sections: the cycles then fit what is left
            log("7. JupyterHub: proxy vs direct, 4 users x 2 sessions, hub stops")
            results["hub"] = asyncio.run(hub_section(tmp, args.quick, log))
            timings["hub"] = results["hub"]["elapsed_s"]
        asyncio.run(server_sections(mode, cfg, tmp, results, timings, deadline, out / "logs"))
        if mode == "full":  # a browser run costs ~1 min: not in bench-quick
            log("6. JupyterLab extension: the browser microphone")
            try:
                results["labext"] = bench_labext(log)
            except Exception as exc:
                results["labext"] = {"error": f"{type(exc).__name__}: {exc}"}
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    out.mkdir(parents=True, exist_ok=True)
    img = page_dir / "img"
    try:
        from plots import make_plots

        results["plots"] = make_plots(results, img)
    except Exception as exc:  # a plotting problem must not lose the measurements
        log(f"plots FAILED: {exc!r}")
        results["plots"] = {"error": f"{type(exc).__name__}: {exc}"}
    text = json.dumps(results, indent=2, default=str) + "\n"
    (out / "results.json").write_text(text, encoding="utf-8")
    page_dir.mkdir(parents=True, exist_ok=True)
    (page_dir / "benchmarks.json").write_text(text, encoding="utf-8")
    (page_dir / "BENCHMARKS.md").write_text(render_markdown(results), encoding="utf-8")
    if publish:
        readme = REPO / "README.md"
        readme.write_text(update_readme(readme.read_text(encoding="utf-8"), results), encoding="utf-8")
    print(render_text(results))
    print(f"\nwrote {out / 'results.json'}, {page_dir / 'BENCHMARKS.md'}, {page_dir / 'benchmarks.json'}, {img}/*.png")
    print(f"total {results['elapsed_s']:.0f} s ({mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
