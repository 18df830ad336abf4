"""Turn bench/run.py results into a plain-text summary and docs/BENCHMARKS.md."""

from __future__ import annotations

from typing import Any

from server import render_markdown as server_markdown, render_text as server_text  # bench/server.py

MODES = (("batch", "batch transcribe"), ("stream", "streaming, non-realtime"), ("realtime", "streaming, realtime"))


def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    digits = 2 if abs(x) < 0.01 else 1 if abs(x) < 0.1 else 0
    return f"{x * 1000:.{digits}f} ms"


def _s(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f} s"


def _num(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}"


def lifecycle_rows(r: dict) -> list[list[str]]:
    coop, esc, st = r["stop_cooperative"], r["stop_escalation"], r["startup"]
    budget = esc["grace_s"] + esc["term_grace_s"]
    kinds = lambda d: ", ".join(f"{k}×{v}" for k, v in sorted(d.items()))  # noqa: E731
    return [
        ["stop, cooperative worker (`s.stop()`)", str(coop["n"]), _ms(coop["latency_s"]["p50"]), _ms(coop["latency_s"]["p99"]), f"end: {kinds(coop['end_kinds'])}"],
        ["close after stop (`with` exit)", str(coop["n"]), _ms(coop["close_after_stop_s"]["p50"]), _ms(coop["close_after_stop_s"]["p99"]), "reap, join tasks, stop loop thread"],
        [f"stop, worker ignores stop + SIGTERM (grace {esc['grace_s']:g} + term_grace {esc['term_grace_s']:g} s)", str(esc["n"]), _ms(esc["latency_s"]["p50"]), _ms(esc["latency_s"]["p99"]), f"end: {kinds(esc['end_kinds'])}"],
        [f"↳ escalation overhead (latency − {budget:g} s)", str(esc["n"]), _ms(esc["overhead_s"]["p50"]), _ms(esc["overhead_s"]["p99"]), "SIGKILL, reap, readers drain"],
        ["start → first event (status starting)", str(st["n"]), _ms(st["first_event_s"]["p50"]), _ms(st["first_event_s"]["p99"]), "supervisor publishes it before spawning"],
        ["start → running (worker emitted)", str(st["n"]), _ms(st["running_s"]["p50"]), _ms(st["running_s"]["p99"]), "interpreter start + imports + model load"],
        ["start → running (received by handle)", str(st["n"]), _ms(st["running_received_s"]["p50"]), _ms(st["running_received_s"]["p99"]), ""],
        ["↳ of which model load (worker-reported)", str(st["n"]), _ms(st["model_load_s"]["p50"]), _ms(st["model_load_s"]["p99"]), "`data.model_load_s`"],
    ]


def decode_rows(r: dict) -> list[list[str]]:
    rows = []
    for name in r["batch"]:
        b = r["batch"][name]
        rows.append([name, "batch", _s(b["cpu_s"]), "1.00×", "–", "–", f"{b['wer']:.3f}", "–", _s(b["wall_s"], 1), "–"])
        for mode, label in MODES[1:]:
            x = r[mode].get(name)
            if x is None:
                continue
            c = r["comparison"][name][mode]
            rows.append([
                name, label.replace("streaming, ", "stream "), _s(x["decode_cpu_s"]), _num(c["decode_cpu_ratio"], suffix="×"),
                _s(x["worker_cpu_after_running_s"]), _num(c["worker_cpu_ratio"], suffix="×"),
                f"{x['wer']:.3f}", _signed(c["wer_delta"]), _s(x["wall_s"], 1), str(x["decodes"]),
            ])
    return rows


def realtime_rows(r: dict) -> list[list[str]]:
    rows = []
    for name, x in r["realtime"].items():
        rows.append([
            name,
            _num(x["cores_used"], 3),
            _s(x["worker_cpu_total_s"]),
            f"{_num(x['partial_rate_hz']['p50'])} Hz",
            f"{_ms(x['final_latency_s']['p50'])} / {_ms(x['final_latency_s']['p90'])}",
            f"{_ms(x['final_latency_client_s']['p50'])} / {_ms(x['final_latency_client_s']['p90'])}",
            f"{_num((x['pipe_delay_s']['p50'] or 0) * 1000, 1)} / {_num((x['pipe_delay_s']['p99'] or 0) * 1000, 1)} ms",
            f"{x['finals']} / {x['partials']}",
        ])
    return rows


LIFECYCLE_HEAD = ["measure", "n", "p50", "p99", "notes"]
DECODE_HEAD = ["file", "mode", "decode CPU", "÷ batch", "worker CPU after running", "÷ batch", "WER", "Δ WER", "wall", "decodes"]
REALTIME_HEAD = ["file", "cores used", "worker CPU total", "partials (median)", "final latency p50 / p90", "+ pipe (client) p50 / p90", "pipe delay p50 / p99", "finals / partials"]


def _table_text(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _table_md(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: c.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _corpus(r: dict) -> str:
    cw = r["corpus_wer"]
    parts = [f"{label}: {cw[mode]:.3f}" for mode, label in MODES if cw.get(mode) is not None]
    return "corpus WER (both files): " + ", ".join(parts)


def render_text(r: dict) -> str:
    m = r["machine"]
    return "\n\n".join([
        f"loquilex-nb benchmarks ({r['mode']}), {m['date']}, {m['nproc']} CPUs {m['cpu_model']}, Python {m['python']}, "
        f"load avg {m['loadavg_start'][0]} → {m['loadavg_end'][0]}, took {r['elapsed_s']:.0f} s",
        "Session lifecycle\n" + _table_text(LIFECYCLE_HEAD, lifecycle_rows(r)),
        "Decode CPU and WER\n" + _table_text(DECODE_HEAD, decode_rows(r)) + "\n" + _corpus(r),
        "Realtime streaming\n" + _table_text(REALTIME_HEAD, realtime_rows(r)),
        *([server_text(r["server"])] if r.get("server") else []),
    ])


def _transcripts(r: dict) -> str:
    lines = []
    for name in r["batch"]:
        lines.append(f"- `{name}`")
        for mode, label in MODES:
            x = r[mode].get(name)
            if x is not None:
                lines.append(f"  - {label} (WER {x['wer']:.3f}): {x['text']}")
    return "\n".join(lines)


def render_markdown(r: dict) -> str:
    m = r["machine"]
    esc = r["stop_escalation"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    rt_note = "" if len(r["realtime"]) == len(r["batch"]) else " (quick mode: speech.wav only)"
    parts: list[Any] = [
        "# Benchmarks",
        "Generated by `bench/run.py` (`make bench`); do not edit by hand — rerun it. "
        "Raw figures, including every sample, are in `bench-out/results.json`.",
        f"- date: {m['date']} ({r['mode']} run, {r['elapsed_s']:.0f} s)\n"
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gb']} GB RAM, {m['platform']}\n"
        f"- Python {m['python']}; {versions}\n"
        f"- commit: {m['commit'] or 'unknown'}\n"
        f"- load average (1 min) at start / end: {m['loadavg_start'][0]} / {m['loadavg_end'][0]} "
        "(other work on the machine inflates wall-clock figures; CPU-time figures are less affected)",
        "## Session lifecycle",
        _table_md(LIFECYCLE_HEAD, lifecycle_rows(r)),
        "- **Cooperative stop**: `lx.session(lx.PushSource())`, iterate events until the worker's "
        "`status running`, then time `s.stop()` (the polite `stop` on the control pipe; the worker "
        "finalizes — nothing was fed — and exits; the supervisor reaps it).",
        f"- **Escalated stop**: a `Supervisor(grace={esc['grace_s']:g}, term_grace={esc['term_grace_s']:g})` on its own "
        "asyncio loop, worker started with `LOQUILEX_WORKER_FAULT=hang,ignore-sigterm` (sleeps forever after "
        "`running`, ignores SIGTERM); time `await session.stop()` and check the end is `killed`. "
        "Escalation overhead = latency − (grace + term_grace).",
        "- **Startup**: from `with s:` (session start, which also starts the private loop thread) "
        "to the event's own `t_mono` (same host monotonic clock in both processes). "
        "With N=20, p99 is essentially the maximum.",
        "## Decode CPU and WER",
        _table_md(DECODE_HEAD, decode_rows(r)),
        _corpus(r),
        "- **batch**: `faster_whisper.WhisperModel(<bundled tiny.en>, device='cpu', compute_type='int8', "
        "cpu_threads=1).transcribe(path, language='en', beam_size=1)`; `time.process_time()` around the call "
        "and consuming the segments (includes decoding the file); model loaded and one warm-up run beforehand, "
        f"median of {len(next(iter(r['batch'].values()))['cpu_samples_s'])} runs.",
        "- **decode CPU** for streaming is the worker's own `decode_cpu_s` (from its `finished` status): "
        "`process_time()` around each Whisper decode, so it includes feature extraction but not file "
        "decoding or VAD (in non-realtime mode the file-reader thread running during a decode is counted too). "
        "**worker CPU after running** is psutil user+system time of the worker process between the "
        "`running` and `finished` events — everything the session cost once the model was loaded, "
        "the fairer comparison with batch.",
        "- **WER**: `jiwer.wer` after lowercasing and replacing punctuation except apostrophes by spaces "
        "(same normalisation as `tests/fixtures/measure_wer.py`); reference = the `.txt` next to the file. "
        "Streaming WER is over the finals' text joined. Δ WER = streaming − batch.",
        f"## Realtime streaming{rt_note}",
        _table_md(REALTIME_HEAD, realtime_rows(r)),
        "- `realtime=True`: the worker paces the file to the clock, so each file takes its duration (~23 s).",
        "- **cores used** = worker CPU between `running` and `finished` ÷ audio seconds; "
        "**worker CPU total** also includes interpreter start-up and model load.",
        "- **partials**: per utterance, `asr.partial` events with its `segment_id` ÷ the final's (t1 − t0); "
        "median over utterances (the live schedule aims at one per `partial_interval` = 0.5 s, i.e. 2 Hz, "
        "when decoding keeps up).",
        "- **final latency**: the worker's `data.latency` on each `asr.final` (arrival of the utterance's last "
        "audio → event emitted); it includes the `vad_silence` wait (0.45 s) plus the final decode. "
        "**+ pipe (client)** adds the pipe delay of that event. **pipe delay**: time the handle yielded an "
        "event (`time.monotonic()`) − the event's worker `t_mono`, over all partials and finals.",
        *([server_markdown(r["server"])] if r.get("server") else []),
        "## Transcripts",
        _transcripts(r),
    ]
    return "\n\n".join(parts) + "\n"
