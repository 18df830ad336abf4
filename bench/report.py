"""Turn bench/run.py results into a plain-text summary and docs/BENCHMARKS.md."""

from __future__ import annotations

from typing import Any

from labext import labext_section

MODES = (("batch", "batch transcribe"), ("stream", "streaming, non-realtime"), ("realtime", "streaming, realtime"))


# -- formatting -------------------------------------------------------------------------------
def _ms(x: float | None) -> str:
    if x is None:
        return "–"
    digits = 2 if abs(x) < 0.01 else 1 if abs(x) < 0.1 else 0
    return f"{x * 1000:.{digits}f} ms"


def _s(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f} s"


def _num(x: float | None, digits: int = 2, suffix: str = "") -> str:
    return "–" if x is None else f"{x:.{digits}f}{suffix}"


def _x(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _signed(x: float | None) -> str:
    return "–" if x is None else f"{x:+.3f}"


def _mib(x: float | None) -> str:
    return "–" if x is None else f"{x / 2**20:.1f} MiB"


def _kib(x: float | None) -> str:
    return "–" if x is None else f"{x / 1024:.0f} KiB"


def _table_text(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def _table_md(head: list[str], rows: list[list[str]]) -> str:
    esc = lambda c: c.replace("|", "\\|").replace("\n", " ")  # noqa: E731
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _ok(part: Any) -> bool:
    return isinstance(part, dict) and "error" not in part


def _failed(part: Any) -> str:
    return f"**FAILED**: {part['error']}" if isinstance(part, dict) and "error" in part else "**not run**"


def _img(r: dict, name: str, alt: str) -> str | None:
    path = (r.get("plots") or {}).get(name)
    return f"![{alt}]({path})" if path else None


def _kinds(d: dict) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(d.items(), key=lambda kv: str(kv[0])))


# -- 0. headline ratios -----------------------------------------------------------------------
SUMMARY_HEAD = ["figure", "ours", "reference", "ours ÷ reference"]


def summary_rows(r: dict) -> list[list[str]]:
    rows: list[list[str]] = []
    s = r.get("stopping")
    if _ok(s):
        v, ra = s["variants"], s["ratios"]
        rows.append(["stop latency p50, cooperative worker", _ms(v["ours_cooperative"]["latency_s"]["p50"]), "jupyter_client `shutdown_kernel(now=False)` " + _ms(v["jupyter_client_now_false"]["latency_s"]["p50"]), _x(ra["cooperative_vs_jupyter_client_now_false"]["median"])])
        rows.append(["stop latency p99, cooperative worker", _ms(v["ours_cooperative"]["latency_s"]["p99"]), "`shutdown_kernel(now=False)` " + _ms(v["jupyter_client_now_false"]["latency_s"]["p99"]), _x(_div(v["ours_cooperative"]["latency_s"]["p99"], v["jupyter_client_now_false"]["latency_s"]["p99"]))])
        rows.append(["stop p50, worker ignoring SIGTERM: time beyond grace + term_grace", _ms(v["ours_ignores_sigterm"]["overhead_s"]["p50"]), "`shutdown_kernel(now=True)` " + _ms(v["jupyter_client_now_true"]["latency_s"]["p50"]), _x(ra["escalation_overhead_vs_jupyter_client_now_true"]["median"])])
        rows.append(["stop p99, worker ignoring SIGTERM: time beyond grace + term_grace", _ms(v["ours_ignores_sigterm"]["overhead_s"]["p99"]), "`shutdown_kernel(now=True)` " + _ms(v["jupyter_client_now_true"]["latency_s"]["p99"]), _x(_div(v["ours_ignores_sigterm"]["overhead_s"]["p99"], v["jupyter_client_now_true"]["latency_s"]["p99"]))])
        if "kernel_exit_direct" in v:
            rows.append(["stop latency p50, cooperative worker", _ms(v["ours_cooperative"]["latency_s"]["p50"]), "ipykernel shutdown request → process exit (waited on directly) " + _ms(v["kernel_exit_direct"]["latency_s"]["p50"]), _x(ra["cooperative_vs_kernel_exit_direct"]["median"])])
        rows.append(["stop latency p50, cooperative worker", _ms(v["ours_cooperative"]["latency_s"]["p50"]), "asyncio `terminate()`+`wait()` " + _ms(v["asyncio_terminate"]["latency_s"]["p50"]), _x(ra["cooperative_vs_asyncio_terminate"]["median"])])
    a = r.get("asr")
    if _ok(a):
        for name, modes in a["comparison"].items():
            short = name.rsplit("/", 1)[-1]
            b = a["batch"][name]
            for mode in ("stream", "realtime"):
                c = modes.get(mode)
                if c is None:
                    continue
                x = a[mode][name]
                label = "non-realtime" if mode == "stream" else "realtime"
                rows.append([f"decode CPU, streaming {label}, {short}", _s(x["decode_cpu_s"]), f"batch `transcribe` {_s(b['cpu_s'])}", _x(c["decode_cpu_ratio"])])
                rows.append([f"WER, streaming {label}, {short}", f"{x['wer']:.3f}", f"batch {b['wer']:.3f}", f"Δ {_signed(c['wer_delta'])}"])
    f = (r.get("fanout") or {}).get("throughput")
    if _ok(f):
        for n, row in f["clients"].items():
            rows.append([f"fan-out events/s, {n} client{'s' if n != '1' else ''}", f"{row['ours']['events_per_s']:.0f}", f"bare Tornado sender (process) {row['bare_process']['events_per_s']:.0f}", _x(row["ratio_vs_bare_process"])])
    st = (r.get("fanout") or {}).get("stalled_client")
    if _ok(st):
        cut = st["runs"]["stalled"].get("cut") or {}
        ctl = f"same run without it {st['control_rss_growth_mib']:+.2f} MiB" if "control_rss_growth_mib" in st else "–"
        diff = f"{st['rss_growth_minus_control_mib']:+.2f} MiB" if "rss_growth_minus_control_mib" in st else "–"
        rows.append([f"server RSS growth over {st['seconds']:.0f} s with a stalled client (cut: {'yes' if cut.get('cut_before_eos') else 'NO'}, events it lost after resuming: {(cut.get('stalled_client_total') or {}).get('lost')})", f"{st['rss_growth_mib']:+.2f} MiB", ctl, diff])
    if _ok(a):
        for name, x in a["realtime"].items():
            rows.append([f"final-caption latency p50 / p90, end of utterance → event at the handle, {name.rsplit('/', 1)[-1]}", f"{_ms(x['final_latency_client_s']['p50'])} / {_ms(x['final_latency_client_s']['p90'])}", "–", "–"])
        lat = a.get("server_latency")
        if _ok(lat):
            rows.append([f"final-caption latency p50 / p90 through the server (WebSocket), {lat.get('file', '').rsplit('/', 1)[-1]}", f"{_ms(lat['e2e_s']['p50'])} / {_ms(lat['e2e_s']['p90'])}", "–", "–"])
    sc = (r.get("scale") or {}).get("sessions")
    if _ok(sc):
        top = list(sc["sizes"])[-1]
        i = sc["sizes"][top]["idle"]
        rows.append([f"supervisor (server process) CPU, {top} idle sessions ({sc['sizes'][top]['idle_server_cpu_per_session_us_per_s']:.0f} µs/s per session)", f"{i['server_cpu_pct']:.3f}% of a core", f"same server, no session {sc['idle_no_sessions']['server_cpu_pct']:.3f}%", _x(sc["sizes"][top]["idle_server_cpu_ratio_vs_no_sessions"])])
        rows.append([f"server fds / tasks / threads per session, {top} sessions", " / ".join(_num(sc["sizes"][top]["per_session"][k]) for k in ("fds", "tasks", "threads")), "–", "–"])
    cy = (r.get("scale") or {}).get("cycles")
    if _ok(cy):
        rows.append([f"{cy['cycles']} create/stop cycles: server fds / threads / tasks / children before → after, RSS", f"{cy['baseline']['fds']}→{cy['after']['fds']} / {cy['baseline']['threads']}→{cy['after']['threads']} / {cy['baseline']['tasks']}→{cy['after']['tasks']} / {cy['baseline']['children']}→{cy['after']['children']}, {_mib(cy['baseline']['rss'])} → {_mib(cy['after']['rss'])}", "–", "–"])
    fa = r.get("faults")
    if _ok(fa):
        clean = sum(1 for x in fa["rows"] if x.get("resources_left_total") == 0)
        lost = sum(_events_lost(x) for x in fa["rows"])
        finals = sum(_finals_mismatch(x) for x in fa["rows"])
        rows.append(["fault matrix: rows with nothing left behind / events lost (of which finals that reached only one of client and `final.txt`)", f"{clean} of {len(fa['rows'])} / {lost} ({finals})", "–", "–"])
    return rows


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


# -- 1. stopping ------------------------------------------------------------------------------
STOP_HEAD = ["variant", "n", "p50", "p99", "min … max", "ours ÷ it (paired median)", "notes"]


def stop_rows(s: dict) -> list[list[str]]:
    v, ra, g = s["variants"], s["ratios"], s["escalation"]
    lat = lambda k: v[k]["latency_s"]  # noqa: E731
    rng = lambda k: f"{_ms(lat(k)['min'])} … {_ms(lat(k)['max'])}"  # noqa: E731
    budget = g["grace_s"] + g["term_grace_s"]
    direct = []
    if "kernel_exit_direct" in v:
        direct = [["ipykernel: the same shutdown request, until the process exits (waited on directly)", str(lat("kernel_exit_direct")["n"]), _ms(lat("kernel_exit_direct")["p50"]), _ms(lat("kernel_exit_direct")["p99"]), rng("kernel_exit_direct"), f"cooperative {_x(ra['cooperative_vs_kernel_exit_direct']['median'])}", "the kernel's own exit, without jupyter_client's 0.1 s poll"]]
    return [
        ["ours: cooperative worker, `s.stop()`", str(lat("ours_cooperative")["n"]), _ms(lat("ours_cooperative")["p50"]), _ms(lat("ours_cooperative")["p99"]), rng("ours_cooperative"), "–", f"end: {_kinds(v['ours_cooperative'].get('end_kinds', {}))}"],
        [f"ours: worker ignores stop + SIGTERM (grace {g['grace_s']:g} + term_grace {g['term_grace_s']:g} s)", str(lat("ours_ignores_sigterm")["n"]), _ms(lat("ours_ignores_sigterm")["p50"]), _ms(lat("ours_ignores_sigterm")["p99"]), rng("ours_ignores_sigterm"), "–", f"end: {_kinds(v['ours_ignores_sigterm'].get('end_kinds', {}))}"],
        [f"↳ beyond the {budget:g} s budget (SIGKILL, reap, drain)", str(v["ours_ignores_sigterm"]["overhead_s"]["n"]), _ms(v["ours_ignores_sigterm"]["overhead_s"]["p50"]), _ms(v["ours_ignores_sigterm"]["overhead_s"]["p99"]), f"{_ms(v['ours_ignores_sigterm']['overhead_s']['min'])} … {_ms(v['ours_ignores_sigterm']['overhead_s']['max'])}", "–", ""],
        ["jupyter_client `KernelManager.shutdown_kernel(now=False)`", str(lat("jupyter_client_now_false")["n"]), _ms(lat("jupyter_client_now_false")["p50"]), _ms(lat("jupyter_client_now_false")["p99"]), rng("jupyter_client_now_false"), f"cooperative {_x(ra['cooperative_vs_jupyter_client_now_false']['median'])}", "real ipykernel, ready first; shutdown_request, polls every 0.1 s"],
        ["jupyter_client `KernelManager.shutdown_kernel(now=True)`", str(lat("jupyter_client_now_true")["n"]), _ms(lat("jupyter_client_now_true")["p50"]), _ms(lat("jupyter_client_now_true")["p99"]), rng("jupyter_client_now_true"), f"escalation overhead {_x(ra['escalation_overhead_vs_jupyter_client_now_true']['median'])}", "SIGKILL + wait"],
        *direct,
        ["asyncio `proc.terminate()` + `await proc.wait()`, idle Python child", str(lat("asyncio_terminate")["n"]), _ms(lat("asyncio_terminate")["p50"]), _ms(lat("asyncio_terminate")["p99"]), rng("asyncio_terminate"), f"cooperative {_x(ra['cooperative_vs_asyncio_terminate']['median'])}, escalation overhead {_x(ra['escalation_overhead_vs_asyncio_terminate']['median'])}", "the floor: a signal and a reap"],
    ]


STARTUP_HEAD = ["measure", "n", "p50", "p99"]


def startup_rows(s: dict) -> list[list[str]]:
    st = s["startup"]
    rows = []
    for key, label in (
        ("ours_first_event_s", "ours: start → first event (status starting)"),
        ("ours_running_s", "ours: start → running (worker emitted; interpreter, imports, model)"),
        ("ours_running_received_s", "ours: start → running received by the handle"),
        ("ours_model_load_s", "↳ of which model load (worker-reported)"),
        ("ipykernel_ready_s", "ipykernel: `start_kernel()` → `wait_for_ready()` returns"),
        ("idle_python_ready_s", "idle Python child: spawn → first line on stdout"),
    ):
        x = st[key]
        rows.append([label, str(x["n"]), _ms(x["p50"]), _ms(x["p99"])])
    rows.append(["ours running ÷ ipykernel ready (paired median)", str(len(st["ours_running_vs_ipykernel_ready"]["samples"])), _x(st["ours_running_vs_ipykernel_ready"]["median"]), ""])
    rows.append(["close after stop (`with` exit: reap, join tasks, stop loop thread)", str(s["close_after_stop_s"]["n"]), _ms(s["close_after_stop_s"]["p50"]), _ms(s["close_after_stop_s"]["p99"])])
    return rows


# -- 2. ASR -----------------------------------------------------------------------------------
DECODE_HEAD = ["file", "mode", "decode CPU", "÷ batch", "worker CPU after running", "÷ batch", "WER", "Δ WER", "wall", "decodes"]


def decode_rows(a: dict) -> list[list[str]]:
    rows = []
    for name in a["batch"]:
        b = a["batch"][name]
        rows.append([name, "batch", _s(b["cpu_s"]), "1.00×", "–", "–", f"{b['wer']:.3f}", "–", _s(b["wall_s"], 1), "–"])
        for mode, label in MODES[1:]:
            x = a[mode].get(name)
            if x is None:
                continue
            c = a["comparison"][name][mode]
            rows.append([
                name, label.replace("streaming, ", "stream "), _s(x["decode_cpu_s"]), _x(c["decode_cpu_ratio"]),
                _s(x["worker_cpu_after_running_s"]), _x(c["worker_cpu_ratio"]),
                f"{x['wer']:.3f}", _signed(c["wer_delta"]), _s(x["wall_s"], 1), str(x["decodes"]),
            ])
    return rows


REALTIME_HEAD = ["file", "cores used", "worker CPU total", "partials/s of speech (median)", "between partials p50 / p90", "final latency p50 / p90 / max", "at the handle p50 / p90", "pipe delay p50 / p99", "finals / partials"]


def realtime_rows(a: dict) -> list[list[str]]:
    rows = []
    for name, x in a["realtime"].items():
        pi = x.get("partial_interval_s") or {}
        rows.append([
            name, _num(x["cores_used"], 3), _s(x["worker_cpu_total_s"]), f"{_num(x['partial_rate_hz']['p50'])} Hz",
            f"{_ms(pi.get('p50'))} / {_ms(pi.get('p90'))}",
            f"{_ms(x['final_latency_s']['p50'])} / {_ms(x['final_latency_s']['p90'])} / {_ms(x['final_latency_s']['max'])}",
            f"{_ms(x['final_latency_client_s']['p50'])} / {_ms(x['final_latency_client_s']['p90'])}",
            f"{_num((x['pipe_delay_s']['p50'] or 0) * 1000, 1)} / {_num((x['pipe_delay_s']['p99'] or 0) * 1000, 1)} ms",
            f"{x['finals']} / {x['partials']}",
        ])
    return rows


LATENCY_HEAD = ["measure", "n", "p50", "p90", "min … max"]


def latency_rows(lat: dict) -> list[list[str]]:
    rows = []
    for key, label in (("e2e_s", "client: final received − chunk with its t1 sent"), ("worker_latency_s", "worker `data.latency`"), ("delivery_s", "worker emit → client receive"), ("e2e_minus_worker_s", "client e2e − worker latency, per final"), ("send_lag_s", "client pacing lag (sent − schedule)")):
        x = lat[key]
        rows.append([label, str(x["n"]), _ms(x["p50"]), _ms(x["p90"]), f"{_ms(x['min'])} … {_ms(x['max'])}"])
    return rows


def _corpus(a: dict) -> str:
    cw = a["corpus_wer"]
    parts = [f"{label}: {cw[mode]:.3f}" for mode, label in MODES if cw.get(mode) is not None]
    return f"corpus WER ({', '.join(cw.get('files', []))}): " + ", ".join(parts)


def _transcripts(a: dict) -> str:
    lines = []
    for name in a["batch"]:
        lines.append(f"- `{name}`")
        for mode, label in MODES:
            x = a[mode].get(name)
            if x is not None:
                lines.append(f"  - {label} (WER {x['wer']:.3f}): {x['text']}")
    return "\n".join(lines)


# -- 3. fan-out -------------------------------------------------------------------------------
FANOUT_HEAD = ["clients", "ours events/s", "bare (thread) events/s", "ours ÷ bare (thread)", "bare (process) events/s", "ours ÷ bare (process)", "server CPU/frame ours / bare (process)", "CPU ÷ bare", "connect → first frame p50, ours / bare (thread)"]


def fanout_rows(f: dict) -> list[list[str]]:
    rows = []
    for n, r in f["clients"].items():
        rows.append([
            n, f"{r['ours']['events_per_s']:.0f}", f"{r['bare_thread']['events_per_s']:.0f}", _x(r["ratio_vs_bare_thread"]),
            f"{r['bare_process']['events_per_s']:.0f}", _x(r["ratio_vs_bare_process"]),
            f"{r['ours']['server_cpu_us_per_frame']:.0f} / {r['bare_process']['server_cpu_us_per_frame']:.0f} µs", _x(r["cpu_ratio_vs_bare_process"]),
            f"{r['ours']['connect_to_first_frame_p50_s'] * 1000:.1f} / {r['bare_thread']['connect_to_first_frame_p50_s'] * 1000:.1f} ms",
        ])
    return rows


STALL_HEAD = ["run", "events (finals)", "server RSS start → max → end", "growth", "stalled client", "other client"]


def stall_rows(st: dict) -> list[list[str]]:
    rows = []
    for key, run in st["runs"].items():
        cut = run.get("cut")
        h = run["healthy_client"]
        if cut:
            total = cut["stalled_client_total"]
            view = cut["client_view"]
            stalled = (
                ("NOT cut before eos; " if not cut["cut_before_eos"] else
                 f"cut: queue full ≈ {cut['overflow_at_s_estimate']:.1f} s, socket released {cut['socket_released_at_s']:.1f} s; " if cut.get("socket_released_at_s") is not None else "cut (socket release not observed); ")
                + f"later read {view['frames']} frames, " + (f"close {view['close_code']}" if view["close_code"] else "no close frame (aborted)")
                + f"; resumed: +{cut['resumed']['events']} events, {cut['resumed']['gap_messages']} gaps → lost {total['lost']}, superseded partials {total['partials_superseded']}"
            )
        else:
            stalled = "none (control)"
        rows.append([
            key, f"{run['session']['events']} ({run['session']['finals']})",
            f"{_mib(run['rss_before'])} → {_mib(run['rss_max'])} → {_mib(run['rss_end'])}", f"{run['rss_growth'] / 2**20:+.2f} MiB", stalled,
            f"lost {h['lost']}, superseded partials {h['partials_superseded']}, close {h['close']}",
        ])
    return rows


# -- 4. scale ---------------------------------------------------------------------------------
OVERHEAD_HEAD = ["sessions", "fds / session", "sockets / session", "tasks / session", "threads / session", "server RSS / session", "idle server CPU", "÷ no session", "per session", "workers' idle CPU", "all running after", "DELETE all", "back to baseline"]


def _residual(r: dict) -> str:
    parts = [f"{k} {v:+d}" for k, v in r.items() if k != "rss" and v]
    return ", ".join(parts) or "none"


def overhead_rows(s: dict) -> list[list[str]]:
    rows = []
    for n, r in s["sizes"].items():
        p, i = r["per_session"], r["idle"]
        rows.append([
            n, _num(p["fds"]), _num(p["sockets"]), _num(p["tasks"]), _num(p["threads"]), _kib(p["rss"]),
            f"{i['server_cpu_s'] * 1000:.1f} ms / {i['wall_s']:.0f} s ({i['server_cpu_pct']:.3f}%)", _x(r["idle_server_cpu_ratio_vs_no_sessions"]),
            f"{r['idle_server_cpu_per_session_us_per_s']:.1f} µs/s", f"{i['workers_cpu_pct']:.0f}% of a core",
            f"{r['all_running_s']:.1f} s", f"{r['stop_all_s']:.2f} s",
            ("yes" if r["back_to_baseline"] else "NO") + f" ({r['settle_s']:.1f} s; residual {_residual(r['residual'])}; RSS {r['residual']['rss'] / 2**20:+.1f} MiB)",
        ])
    return rows


CYCLES_HEAD = ["cycles (full)", "wall", "cycles/s", "POST p50 / p90", "to running p50 / p90", "DELETE p50 / p90", "end", "fds", "threads", "tasks", "children", "server RSS", "back to baseline"]


def cycles_rows(c: dict) -> list[list[str]]:
    b, a = c["baseline"], c["after"]
    kinds = _kinds(c["end_kinds"])
    if c["errors"]:
        kinds += "; errors " + ", ".join(f"{k}×{v}" for k, v in c["errors"].items())
    arrow = lambda k: f"{b[k]} → {a[k]}"  # noqa: E731
    return [[
        f"{c['cycles']} ({c.get('full_cycles', 0)})" + (f" (of {c['target']}, time budget)" if c["truncated_by_budget"] else ""),
        f"{c['wall_s']:.0f} s", _num(c["cycles_per_s"]),
        f"{_ms(c['post_s']['p50'])} / {_ms(c['post_s']['p90'])}",
        f"{_ms(c['running_s']['p50'])} / {_ms(c['running_s']['p90'])}" if c.get("running_s") else "–",
        f"{_ms(c['delete_s']['p50'])} / {_ms(c['delete_s']['p90'])}",
        kinds, arrow("fds"), arrow("threads"), arrow("tasks"), arrow("children"), f"{_mib(b['rss'])} → {_mib(a['rss'])}",
        ("yes" if c["back_to_baseline"] else "NO") + f" ({c['settle_s']:.1f} s)",
    ]]


# -- 5. faults --------------------------------------------------------------------------------
FAULT_HEAD = ["fault", "mode", "what the user sees", "end", "events lost", "finals delivered / on disk", "resources left", "time to clean"]


def _left(x: dict) -> str:
    left = x.get("resources_left")
    if left is None:
        return "–"
    nonzero = {k: v for k, v in left.items() if v}
    return "0" if not nonzero else ", ".join(f"{k} {v:+d}" for k, v in nonzero.items())


def _finals_mismatch(x: dict) -> int:
    """Finals on disk that never reached the client, or delivered but never written."""
    fd, fk = x.get("finals_delivered"), x.get("finals_on_disk")
    return abs(fk - fd) if fd is not None and fk is not None else 0


def _events_lost(x: dict) -> int:
    """Lost against the session's log, plus finals the client and `final.txt` disagree on."""
    return ((x.get("events") or {}).get("lost", 0) or 0) + _finals_mismatch(x)


def fault_rows(f: dict) -> list[list[str]]:
    rows = []
    for x in f["rows"]:
        if "error" in x:
            rows.append([x["fault"], "–", f"FAILED: {x['error'][:160]}", "–", "–", "–", "–", "–"])
            continue
        ev = x.get("events")
        lost = "–" if not ev else f"{ev['lost']} of {ev['expected']}" + (f" ({ev['partials_superseded']} partials superseded)" if ev.get("partials_superseded") else "")
        if _finals_mismatch(x):
            lost += f" + {_finals_mismatch(x)} final(s) client ≠ disk"
        fin = "–" if x.get("finals_delivered") is None else f"{x['finals_delivered']} / {x['finals_on_disk']}"
        end = x.get("end") or "–"
        if x.get("expected_end") and x.get("end") and x["end"] != x["expected_end"]:
            end += f" (expected {x['expected_end']})"
        if x.get("server_exit_code") is not None:
            end = f"server exit {x['server_exit_code']} after {_s(x['server_exit_s'])}"
        rows.append([x["fault"], x.get("mode", "–"), x.get("user_sees", ""), end, lost, fin, _left(x), _s(x.get("time_to_clean_s"), 3)])
    return rows


def fault_findings(f: dict) -> list[str]:
    """Facts of this run worth a reader's attention, derived from the rows (not hand-written)."""
    out = []
    for x in f["rows"]:
        if "error" in x:
            continue
        name = f"**{x['fault']}** ({x.get('mode')})"
        if x.get("expected_end") and x.get("end") and x["end"] != x["expected_end"]:
            out.append(f"{name}: ended `{x['end']}`, expected `{x['expected_end']}`.")
        fd, fk = x.get("finals_delivered"), x.get("finals_on_disk")
        if fd is not None and fk is not None and fd != fk:
            where = "reached the disk but never the client" if fk > fd else "reached the client but not the disk"
            out.append(f"{name}: {abs(fk - fd)} final(s) {where} ({fd} delivered, {fk} in `final.txt`).")
        if x.get("utterances_spoken") and x.get("utterances_delivered_or_on_disk", 0) < x["utterances_spoken"]:
            out.append(f"{name}: {x['utterances_spoken'] - x['utterances_delivered_or_on_disk']} of {x['utterances_spoken']} spoken utterances "
                       "ended up neither delivered nor on disk: the first failed caption write ends the session (the worker exits 2).")
        if x["fault"] == "stalled client" and x.get("cut", {}).get("client_view") and not x["cut"].get("client_saw_4008"):
            out.append(f"{name}: the stalled client never receives the 4008 close frame; when it reads again it sees an aborted connection.")
        if (x.get("resources_left_total") or 0) != 0:
            out.append(f"{name}: resources left: {x['resources_left']}.")
    return out


def fault_notes(f: dict) -> str:
    lines = []
    for x in f["rows"]:
        note = f"- **{x['fault']}** ({x.get('mode', '?')}): {x.get('how', '')}"
        if x.get("time_note"):
            note += f". {x['time_note'][0].upper()}{x['time_note'][1:]}"
        lines.append(note + ".")
    return "\n".join(lines)


# -- assembling -------------------------------------------------------------------------------
def _shutdowns(r: dict) -> str:
    parts = []
    for name, info in (r.get("servers") or {}).items():
        if not info:
            continue
        bad = "" if info.get("children_left", 0) == 0 and not info.get("needed_sigkill") else f", {info['children_left']} children left, sigkill={info['needed_sigkill']}"
        logp = f", {len(info['log_problems'])} error lines in its log" if info.get("log_problems") else ""
        parts.append(f"{name}: start {info.get('start_s')} s, stop {info.get('took_s', 0):.2f} s (exit {info.get('exit_code')}{bad}){logp}")
    return "; ".join(parts)


def render_text(r: dict) -> str:
    m = r["machine"]
    out = [
        f"loquilex-nb benchmarks ({r['mode']}), {m['date']}, {m['nproc']} CPUs {m['cpu_model']}, Python {m['python']}, "
        f"load avg {m['loadavg_start'][0]} → {m['loadavg_end'][0]}, took {r['elapsed_s']:.0f} s; sections: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in r.get("timings_s", {}).items()),
        "Summary\n" + _table_text(SUMMARY_HEAD, summary_rows(r)),
    ]
    s = r.get("stopping")
    out.append("1. Stopping\n" + (_table_text(STOP_HEAD, stop_rows(s)) + "\n\n" + _table_text(STARTUP_HEAD, startup_rows(s)) if _ok(s) else _failed(s)))
    a = r.get("asr")
    if _ok(a):
        out.append("2. Streaming ASR\n" + _table_text(DECODE_HEAD, decode_rows(a)) + "\n" + _corpus(a) + "\n\n" + _table_text(REALTIME_HEAD, realtime_rows(a)))
        lat = a.get("server_latency")
        out.append("2. Server end-to-end final latency\n" + (_table_text(LATENCY_HEAD, latency_rows(lat)) if _ok(lat) else _failed(lat)))
    else:
        out.append("2. Streaming ASR\n" + _failed(a))
    fo = r.get("fanout") or {}
    out.append("3. Fan-out\n" + (_table_text(FANOUT_HEAD, fanout_rows(fo["throughput"])) if _ok(fo.get("throughput")) else _failed(fo.get("throughput"))))
    out.append("3. Stalled client\n" + (_table_text(STALL_HEAD, stall_rows(fo["stalled_client"])) if _ok(fo.get("stalled_client")) else _failed(fo.get("stalled_client"))))
    sc = r.get("scale") or {}
    out.append("4. Scale\n" + (_table_text(OVERHEAD_HEAD, overhead_rows(sc["sessions"])) if _ok(sc.get("sessions")) else _failed(sc.get("sessions"))))
    c = sc.get("cycles")
    out.append("4. Create/stop cycles\n" + (_table_text(CYCLES_HEAD, cycles_rows(c)) + f"\nRSS (MiB) every {c['curve_every']} cycles: {c['rss_curve_mib']}" if _ok(c) else _failed(c)))
    fa = r.get("faults")
    out.append("5. Fault matrix\n" + (_table_text(FAULT_HEAD, fault_rows(fa)) if _ok(fa) else _failed(fa)))
    if r.get("hub") is not None:  # bench/hub.py
        from hub import hub_markdown

        out.append(hub_markdown(r["hub"], _table_text))
    out.append("Server processes: " + _shutdowns(r))
    return "\n\n".join(out)


WER_CAVEAT = (
    "**Absolute WERs flatter the model**: the espeak-ng fixture sentences were rephrased until Whisper tiny.en "
    "transcribed them (nearly) right. Only the comparison with batch `transcribe` on the same audio (Δ WER) says "
    "something about streaming."
)

README_START = "<!-- figures:start (generated by bench/run.py from docs/benchmarks.json; do not edit) -->"
README_END = "<!-- figures:end -->"


def readme_figures(r: dict) -> str:
    """The README's Figures block: provenance and the summary table, from one results dict."""
    m = r["machine"]
    commit = m.get("commit") or "unknown"
    dirty = m.get("dirty", commit.endswith("-dirty"))
    start, end = m["loadavg_start"][0], m["loadavg_end"][0]
    load = max(start, end)
    lines = [
        README_START,
        f"From the last full `make bench` ({m['date'][:10]}, commit `{commit.removesuffix('-dirty')}`"
        + (", **run on a tree with uncommitted changes**" if dirty else "")
        + f"; {m['nproc']} CPUs, load average {start} at start, {end} at the end"
        + (": **taken under load**, wall-clock figures are inflated" if load >= m["nproc"] * 0.5 else "")
        + "). Details, references and every sample: [docs/BENCHMARKS.md](docs/BENCHMARKS.md).",
        "",
        _table_md(SUMMARY_HEAD, summary_rows(r)),
        "",
        WER_CAVEAT,
        README_END,
    ]
    return "\n".join(lines)


def update_readme(readme_text: str, r: dict) -> str:
    """readme_text with its figures block replaced (it must have the markers)."""
    start, end = readme_text.index(README_START), readme_text.index(README_END) + len(README_END)
    return readme_text[:start] + readme_figures(r) + readme_text[end:]


def render_markdown(r: dict) -> str:
    m = r["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    parts: list[Any] = [
        "# Benchmarks",
        "Generated by `bench/run.py` (`make bench`; `make bench-quick` runs the same code on small sizes); "
        "do not edit by hand — rerun it. Every figure is measured in the same run as the reference it is "
        "compared with, and where a reference exists the comparison is a ratio (ours ÷ reference), paired "
        "by round where the bench interleaves them: the machine is shared and noisy, and ratios and CPU-time "
        "figures move much less than wall-clock ones. Raw figures, including every sample, are in "
        "[`benchmarks.json`](benchmarks.json) next to this page (and `bench-out/results.json`).",
        f"- date: {m['date']} ({r['mode']} run, {r['elapsed_s']:.0f} s: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in r.get("timings_s", {}).items()) + ")\n"
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gb']} GB RAM, {m['platform']}\n"
        f"- Python {m['python']}; {versions}\n"
        f"- commit: {m['commit'] or 'unknown'}\n"
        f"- load average (1 min) at start / end: {m['loadavg_start'][0]} / {m['loadavg_end'][0]} on {m['nproc']} CPUs "
        "(other work on the machine inflates wall-clock figures)",
        "## Summary",
        _table_md(SUMMARY_HEAD, summary_rows(r)),
    ]

    # 1
    s = r.get("stopping")
    parts.append("## 1. Stopping")
    if _ok(s):
        g = s["escalation"]
        parts += [
            _table_md(STOP_HEAD, stop_rows(s)),
            _img(r, "stop_latency", "stop latency per variant"),
            f"- All six variants run **interleaved** in the bench process, one of each per round, {s['n']} rounds, so a burst of "
            "load hits them alike; ratios are the median of the per-round ratios.",
            "- **ours, cooperative**: `lx.session(lx.PushSource())` (embedded mode), iterate events until the worker's "
            "`status running`, then time `s.stop()`: the polite `stop` on the control pipe, the worker finalizes (nothing "
            "was fed) and exits, the supervisor reaps it and its reader tasks drain.",
            f"- **ours, ignores SIGTERM**: a `Supervisor(grace={g['grace_s']:g}, term_grace={g['term_grace_s']:g})` on its own asyncio loop, "
            "worker `python -m loquilex_nb.testing.faulty_worker hang,ignore-sigterm` (its main thread stuck in a native call from `running` on, SIGTERM ignored); time "
            "`await session.stop()` (ends `killed`). Its wall time is set by the two graces (3 + 2 s by default); what the "
            "supervisor adds is the time beyond them, compared with `shutdown_kernel(now=True)` (also SIGKILL + reap).",
            "- **jupyter_client**: `KernelManager(kernel_name='python3')`, `start_kernel()`, a client's `wait_for_ready()`, "
            "then time `shutdown_kernel(now=False)` (shutdown_request on the control channel, then polling the process every "
            "0.1 s, so it includes up to 0.1 s of polling) or `shutdown_kernel(now=True)` (kill). **ipykernel, waited on "
            "directly**: the same shutdown request from `KernelClient.shutdown()`, timed until `Popen.wait()` on the kernel "
            "process returns: the kernel's own shutdown and exit, with no polling interval. **asyncio**: `create_subprocess_exec(python -c 'print ready; sleep')`, "
            "read `ready`, time `terminate()` + `await wait()` — the least any stop of a child process can cost.",
            "### Startup (same runs)",
            _table_md(STARTUP_HEAD, startup_rows(s)),
        ]
    else:
        parts.append(_failed(s))

    # 2
    a = r.get("asr")
    parts.append("## 2. Streaming ASR")
    if _ok(a):
        nrep = len(next(iter(a["batch"].values()))["cpu_samples_s"])
        lat = a.get("server_latency")
        parts += [
            "### Decode CPU and WER against one batch `transcribe`",
            _table_md(DECODE_HEAD, decode_rows(a)),
            _corpus(a),
            "- **batch** (the reference): `faster_whisper.WhisperModel(<bundled tiny.en>, device='cpu', compute_type='int8', "
            "cpu_threads=1).transcribe(path, language='en', beam_size=1)`, `time.process_time()` around the call and "
            f"consuming the segments (includes decoding the file); model loaded and one warm-up run beforehand, median of {nrep} run(s).",
            "- **decode CPU** for streaming is the worker's own `decode_cpu_s` (from its `finished` status): `process_time()` "
            "around each Whisper decode. **worker CPU after running** is psutil user+system CPU of the worker process between "
            "its `running` and `finished` events — everything the session cost once the model was loaded: the fairer "
            "comparison with batch. Non-realtime streaming decodes in windows of up to `batch_window`; realtime decodes a "
            "partial every `partial_interval` of new audio and a final per utterance, so it costs several times batch.",
            "- **WER**: `jiwer.wer` after lowercasing and replacing punctuation except apostrophes by spaces; reference = the "
            "`.txt` next to the file; streaming WER is over the finals' text joined. Δ WER = streaming − batch.",
            "- " + WER_CAVEAT,
            "### Final-caption latency and partial cadence (realtime)",
            _table_md(REALTIME_HEAD, realtime_rows(a)),
            _img(r, "final_latency", "final-caption latency distribution and partial cadence"),
            "- `realtime=True`: the worker paces the file to the clock. **final latency** is the worker's `data.latency` on "
            "each `asr.final`: the arrival of the utterance's last audio → the event emitted; it includes the `vad_silence` "
            "wait (0.45 s) and the final decode. **at the handle** adds the pipe delay to the handle in this process "
            "(end of utterance → event at the client). **between partials**: wall-clock time between consecutive "
            "`asr.partial` events of one utterance as the handle received them (the schedule asks for one per `partial_interval`, 0.45 s, of new "
            "audio, skipped while the decoder is behind). **cores used** = worker CPU between `running` and `finished` ÷ audio seconds.",
            "### Through the server: end to end",
            _table_md(LATENCY_HEAD, latency_rows(lat)) if _ok(lat) else _failed(lat),
        ]
        if _ok(lat):
            parts.append(
                f"- a push session on a jupyter server; after `status running` the client sends `{lat.get('file', 'speech.wav')}` "
                f"({lat['audio_s']:.1f} s) as int16 PCM WebSocket frames of 100 ms paced to the clock, then {lat['silence_tail_s']:g} s "
                "of zeros, then `stop`. Per `asr.final`: client receive time − client send time of the chunk holding the final's "
                f"`t1` (end of utterance → event at the client). {lat['finals']} finals ({lat['finals_after_stop']} after the stop, excluded)."
            )
        parts += ["### Transcripts", _transcripts(a)]
    else:
        parts.append(_failed(a))

    # 3
    fo = r.get("fanout") or {}
    f, st = fo.get("throughput"), fo.get("stalled_client")
    parts.append("## 3. Fan-out")
    parts.append("### Throughput to 1, 4 and 16 WebSocket clients against a bare Tornado sender")
    if _ok(f):
        parts += [
            _table_md(FANOUT_HEAD, fanout_rows(f)),
            _img(r, "fanout", "fan-out throughput"),
            f"- one ended non-realtime file session on {f['file_parts']} concatenated ({f['audio_s']:.0f} s of audio, "
            f"`partial_interval` 0.1): {sum(f['frames_per_session'])} frames per client, {f['frame_bytes']['p50']:.0f} bytes median. "
            "For each N, N clients connect at once with `hello {last_seq: 0}` and read every frame up to `eos`; events/s = frames "
            "received by all clients ÷ wall time from the first connect to the last `eos`; each round repeats the N-client fan-out "
            f"16/N times so every round moves the same frames; median of {f['rounds']} rounds, ratios are medians of per-round pairs. "
            "**server CPU/frame**: user+system CPU of the serving process over the round ÷ frames.",
            "- **bare**: a Tornado `WebSocketHandler` writing the very frames our server sent (captured), pre-serialised, with "
            "`await self.write_message(...)` after the client's hello; **thread** = in the bench process on its own thread and "
            "event loop, **process** = the same app in a child process (like the jupyter server). Ours also serialises each "
            "envelope per connection and runs jupyter's auth on the upgrade.",
        ]
    else:
        parts.append(_failed(f))
    parts.append("### Server memory with one stalled client")
    if _ok(st):
        run = st["runs"]["stalled"]
        cut = run.get("cut") or {}
        parts += [
            _table_md(STALL_HEAD, stall_rows(st)),
            _img(r, "stall_rss", "server RSS with a stalled client"),
            f"- server started with `--LoquilexApp.send_queue_limit={st['send_queue_limit']}` (default 1000); a non-realtime file "
            f"session on {st['audio_s']:.0f} s of audio (`partial_interval` 0.1) produces events for most of the {st['seconds']:.0f} s; "
            "the jupyter server's RSS is sampled every second (psutil). The **stalled client** is a raw socket that completes the "
            f"WebSocket upgrade, sends `hello` and never reads; it sets `SO_RCVBUF` {st['rcvbuf']} B and an Ethernet-sized MSS "
            "(1460) — over loopback the 64 KiB MSS lets the kernel buffer ~3 MB on its behalf before the server's queue even starts. "
            "A second client reads everything.",
            "- The queue holds at most `send_queue_limit` messages (a newer partial replaces a queued one of the same utterance), "
            "so per stalled connection memory is bounded by the limit × message size. When it is full the server closes the "
            "connection with 4008; tornado then waits 5 s for the peer's close frame and aborts the socket — the bench watches "
            "the server's socket for that connection (`psutil` `net_connections`) every 0.1 s, so **queue full ≈ socket released − 5 s**. "
            f"The last event the stalled client ever got (seq {cut.get('client_view', {}).get('last_seq')}) was published at "
            f"{cut.get('stalled_last_seq_published_at_s')} s. A fully stalled client cannot read the 4008 frame: it sits behind the "
            "data the server could not send, so when the client finally reads it sees the frames the kernel held and then an aborted "
            "connection. It then resumes with its `resume_token` (the server pinned its position) and misses nothing but superseded partials.",
            "- Server RSS also holds the session's event log (up to `replay_capacity` events per session, kept for late joiners) "
            "whether or not a client stalls" + ("; the control run (the same session, no stalled client) shows how much." if "control" in st["runs"] else "."),
        ]
    else:
        parts.append(_failed(st))

    # 4
    sc = r.get("scale") or {}
    s4, c = sc.get("sessions"), sc.get("cycles")
    parts.append("## 4. Scale")
    parts.append("### Concurrent sessions: server resources per session and supervisor CPU while idle")
    if _ok(s4):
        i0 = s4["idle_no_sessions"]
        parts += [
            _table_md(OVERHEAD_HEAD, overhead_rows(s4)),
            _img(r, "scale", "per-session server resources and idle supervisor CPU"),
            "- `GET loquilex/api/resources` (the jupyter server process's own counters) before, and with N push sessions running "
            "(all past `status running`, one WebSocket client each, after 1 s); per session = difference ÷ N. Then DELETE all and "
            "poll until fds, sockets, tasks, threads and children equal the baseline.",
            f"- **idle server CPU**: user+system CPU of the jupyter server process (the supervisor, hub and handlers; the workers "
            f"are separate processes and excluded) over {s4['idle_s']:g} s while the N sessions idle (no audio), against the same "
            f"server with no session over the same window ({i0['server_cpu_s'] * 1000:.1f} ms, {i0['server_cpu_pct']:.3f}% of a core). "
            f"Measured as the sum of the server threads' run time in `/proc/PID/task/*/schedstat` (ns; source: {i0.get('server_cpu_source')}), "
            "since psutil's user+system time moves in 10 ms ticks. **per session** = (CPU − the no-session figure) ÷ N ÷ seconds. "
            "**workers' idle CPU**: the N workers together (psutil; each worker polls its queue every 50 ms).",
        ]
    else:
        parts.append(_failed(s4))
    parts.append("### Create/stop cycles")
    if _ok(c):
        parts += [
            _table_md(CYCLES_HEAD, cycles_rows(c)),
            _img(r, "cycles_rss", "server RSS over create/stop cycles"),
            f"- POST a push session, then DELETE it, {c['in_flight']} cycles in flight, on a fresh server. A *full* cycle waits for the "
            f"session's `running` state (worker up, model loaded) before the DELETE; one cycle in {c.get('partial_cycle_every', 5)} "
            "is stopped at once, while its worker may still be loading. Counters before and after "
            f"(after settling). Server RSS every {c['curve_every']} cycles (MiB): {c['rss_curve_mib']}.",
        ]
    else:
        parts.append(_failed(c))

    if r.get("live") is not None:
        from floor import markdown as floor_markdown
        from live import markdown as live_markdown
        from spread import markdown as spread_markdown

        parts += [
            "## 2b. Live captions in a room",
            "What these tables say, the targets they meet and miss, and the experiments behind the recogniser's "
            "choices: [LIVE_CAPTIONS.md](LIVE_CAPTIONS.md) (written by hand).",
            live_markdown(r["live"]),
        ]
        for key, markdown in (("floor", floor_markdown), ("spread", spread_markdown)):
            if r.get(key) is not None:
                parts.append(markdown(r[key]))

    # 5
    fa = r.get("faults")
    parts.append("## 5. Fault matrix")
    if _ok(fa):
        parts += [
            _table_md(FAULT_HEAD, fault_rows(fa)),
            _img(r, "faults", "time to clean per fault"),
            "Every row injects its fault for real, in this run. **What the user sees** is the event stream of a client "
            "(status states, errors, finals, `eos`) and the WebSocket close code. **Events lost**: events of the session's log "
            "(read back by a late joiner after the end) that the client never received; partials the server replaced by a "
            "newer one while queued are by design and counted apart; a final that reached only one of the client and "
            "`final.txt` is counted as lost too (\"+ n final(s) client ≠ disk\"). **Finals delivered / on disk**: `asr.final` events the "
            "client received / lines of `final.txt`. After a crash the truth is what the worker emitted: it sends each final as "
            "an event *before* writing it to `final.txt`, so a worker SIGKILL can leave a delivered final unwritten, and a "
            "server SIGKILL can leave a written final undelivered (the file is then the only record); where the processes "
            "survive, the two must agree. **Resources left**: processes the row started that still run, and the "
            "server's (or for embedded rows this process's) fds, sockets, asyncio tasks and threads against the row's "
            "baseline, once settled. **Time to clean**: fault → session ended, its processes gone and counters back to the "
            "baseline (polled every 0.1 s), unless the notes say otherwise. Server rows use default server settings "
            "(`stop_grace` 3 s, `term_grace` 2 s, `sweep_interval` 2 s) unless the notes say otherwise.",
            f"- output disk full: method used in this run: **{fa.get('disk_full_method')}**.",
            "### What happened in each row",
            fault_notes(fa),
            "### Noted in this run",
            "\n".join(f"- {line}" for line in fault_findings(fa)) or "- nothing unexpected.",
        ]
    else:
        parts.append(_failed(fa))
    parts += labext_section(r)
    if r.get("hub") is not None:  # bench/hub.py
        from hub import hub_markdown

        parts.append(hub_markdown(r["hub"], _table_md))
    parts.append("## Server processes")
    parts.append("Every jupyter server the bench started, with its start time and how it stopped: " + _shutdowns(r))
    return "\n\n".join(p for p in parts if p) + "\n"
