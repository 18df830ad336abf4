"""Fault rows against a real `jupyter server` child: a worker SIGKILLed, corrupt audio, a missing
model, a WebSocket dropped and resumed, the server itself SIGTERMed or SIGKILLed, a stalled client."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from faults_common import (
    CLEAN_TIMEOUT,
    CORRUPT,
    EVENT_TIMEOUT,
    SERVER_KEYS,
    SHORT,
    SILENCE,
    Watcher,
    alive,
    final_lines,
    finish_row,
    lost,
    server_lost,
    server_settle,
    tidy,
)
from measure import read_pcm


async def post(srv, body: dict) -> dict:
    return await srv.api("POST", "sessions", body)


async def push_session(srv, body: dict | None = None) -> tuple[dict, Watcher]:
    info = await post(srv, {"source": {"kind": "push"}, **(body or {})})
    w = Watcher(srv, info["id"])
    await w.connect()
    await w.wait(lambda: w.has("status", "running"), EVENT_TIMEOUT, "running")
    return info, w


async def speak(w: Watcher, finals: int = 1) -> None:
    """Feed short.wav and a second of silence; wait for its final."""
    before = w.finals()
    await w.send_pcm(read_pcm(SHORT) + SILENCE)
    await w.wait(lambda: w.finals() >= before + finals, EVENT_TIMEOUT, "a final")


async def row_worker_sigkill(srv, counters) -> dict:
    base = counters(await srv.resources())
    info, w = await push_session(srv)
    await speak(w)
    t_fault = time.monotonic()
    os.kill(info["pid"], signal.SIGKILL)
    await w.wait_closed()
    t_end = time.monotonic()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await w.aclose()
    left = await server_settle(srv, base, [info["pid"]], counters)
    row = {
        "fault": "worker SIGKILL", "mode": "server",
        "how": "push session with a WebSocket client; after its first final, `kill -9` the worker",
        "user_sees": w.story(), "end": end["end"]["kind"], "end_detail": end["end"]["detail"], "expected_end": "crashed",
        "events": await server_lost(srv, w, info["id"], base, counters), "finals_delivered": w.finals(), "finals_on_disk": final_lines(end["out_dir"]),
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


async def row_corrupt_audio(srv, counters) -> dict:
    shutil.copy(CORRUPT, srv.root / "corrupt.wav")
    base = counters(await srv.resources())
    t_fault = time.monotonic()
    # probed before any process starts: a 400, not a crashed worker (issue 9)
    code, answer = await srv.rest("POST", "loquilex/api/sessions", {"source": {"kind": "file", "path": "corrupt.wav", "realtime": False}})
    t_end = time.monotonic()
    left = await server_settle(srv, base, [], counters)
    row = {
        "fault": "corrupt audio", "mode": "server",
        "how": "file session on `tests/fixtures/corrupt.wav` (RIFF header with an invalid format tag), non-realtime",
        "user_sees": f"HTTP {code}: {answer.get('message', '') if isinstance(answer, dict) else answer}", "end": f"refused ({code})", "expected_end": "refused (400)",
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


async def row_missing_model_server(srv, counters, model_link: Path) -> dict:
    base = counters(await srv.resources())
    target = os.readlink(model_link)
    model_link.unlink()  # the configured model directory disappears under a running server
    try:
        t_fault = time.monotonic()
        code, body = await srv.rest("POST", "loquilex/api/sessions", {"source": {"kind": "push"}})
        took = time.monotonic() - t_fault
        now = counters(await srv.resources())
    finally:
        os.symlink(target, model_link)
    left = {"processes": max(0, now["children"] - base["children"]), **{f"server_{k}": now[k] - base[k] for k in SERVER_KEYS}}
    msg = (body or {}).get("message", "") if isinstance(body, dict) else str(body)
    return {
        "fault": "missing model dir", "mode": "server",
        "how": "server started with `--LoquilexApp.model=<symlink>`; the symlink is removed, then POST a session",
        "user_sees": f"HTTP {code} {(body or {}).get('error', '') if isinstance(body, dict) else ''}: {tidy(msg)[:90]}",
        "http_status": code, "end": None, "expected_end": None,
        "events": None, "finals_delivered": None, "finals_on_disk": None,
        "time_to_end_s": round(took, 4), "time_to_clean_s": round(took, 4),
        "resources_left": left, "resources_left_total": sum(abs(v) for v in left.values()),
    }


async def row_ws_resume(srv, counters, log) -> dict:
    base = counters(await srv.resources())
    info, feeder = await push_session(srv)
    obs = Watcher(srv, info["id"])
    await obs.connect()
    await obs.wait(lambda: obs.has("status", "running"), EVENT_TIMEOUT, "running")
    feed = asyncio.create_task(feeder.send_pcm(read_pcm(SHORT) + SILENCE, chunk_s=0.1))
    await obs.wait(lambda: obs.has("asr.partial"), EVENT_TIMEOUT, "a partial")
    t_fault = time.monotonic()
    obs.drop()
    await obs.wait_closed(10)
    before = obs.seqs()
    last_before = max(before)
    await asyncio.sleep(1.0)  # events keep coming while the client is away
    published_while_away = (await srv.api("GET", f"sessions/{info['id']}"))["last_seq"] - last_before
    t_re = await obs.connect(last_seq=last_before, token=obs.token)
    target = last_before + published_while_away
    await obs.wait(lambda: max(obs.seqs(), default=0) >= target, EVENT_TIMEOUT, "replay")
    t_caught = time.monotonic()
    await feed
    await feeder.send({"type": "stop"})
    await obs.wait_closed()
    await feeder.wait_closed()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await obs.aclose()
    await feeder.aclose()
    left = await server_settle(srv, base, [info["pid"]], counters)
    gaps = sum(1 for e in obs.envs if e["type"] == "gap")
    row = {
        "fault": "WebSocket drop and resume", "mode": "server",
        "how": "push session fed in real time by a second client; the watching client's TCP connection is cut (no close frame) after its first partial, it reconnects 1 s later with `hello {last_seq, resume_token}`",
        "user_sees": obs.story() + f" (gap messages: {gaps}; {published_while_away} events published while away, replayed in {1000 * (t_caught - t_re):.0f} ms)",
        "end": end["end"]["kind"], "expected_end": "clean",
        "events": await server_lost(srv, obs, info["id"], base, counters), "gap_messages": gaps, "published_while_away": published_while_away,
        "finals_delivered": obs.finals(), "finals_on_disk": final_lines(end["out_dir"]),
        "resume_caught_up_s": round(t_caught - t_re, 3),
        "time_to_end_s": round(t_caught - t_fault, 3),
        "time_note": "time to clean = reconnect → every missed event received (the client stayed away 1 s on purpose); resources are counted after the session ended",
    }
    row = finish_row(row, left, t_fault)
    row["time_to_clean_s"] = row["resume_caught_up_s"]
    return row


async def _two_sessions(srv) -> tuple[dict, Watcher, dict]:
    """A: fed, one final delivered, then mid-utterance (speech without the closing silence); B: idle."""
    a, w = await push_session(srv)
    await speak(w)
    b = await post(srv, {"source": {"kind": "push"}})
    pcm = read_pcm(SHORT)
    await w.send_pcm(pcm[: len(pcm) * 2 // 3 // 2 * 2], chunk_s=0.1)  # two thirds of an utterance, in real time
    await w.wait(lambda: sum(1 for e in w.envs if e["type"] == "asr.partial" and e["seq"] > max(x["seq"] for x in w.envs if x["type"] == "asr.final")) > 0, EVENT_TIMEOUT, "a partial of the second utterance")
    return a, w, b


async def row_server_signal(srv, sig: int) -> dict:
    a, w, b = await _two_sessions(srv)
    pids = [a["pid"], b["pid"]]
    server_pid = srv.proc.pid
    t_fault = time.monotonic()
    srv.proc.send_signal(sig)
    try:
        await asyncio.get_running_loop().run_in_executor(None, lambda: srv.proc.wait(30))
    except subprocess.TimeoutExpired:
        pass
    t_exit = time.monotonic()
    await w.wait_closed(10)
    while any(alive(p) for p in pids) and time.monotonic() - t_exit < CLEAN_TIMEOUT:
        await asyncio.sleep(0.02)
    t_clean = time.monotonic()
    await w.aclose()
    left_pids = [p for p in pids if alive(p)] + ([server_pid] if alive(server_pid) else [])
    name = "server SIGTERM" if sig == signal.SIGTERM else "server SIGKILL"
    row = {
        "fault": name, "mode": "server",
        "how": "two push sessions (one with a WebSocket client, one final delivered, a second utterance in progress; one idle), then "
        + ("SIGTERM to the jupyter server (its own shutdown runs `stop_extension`)" if sig == signal.SIGTERM else "SIGKILL to the jupyter server (nothing runs; the workers' parent-death signal must end them)"),
        "user_sees": w.story(), "end": None, "expected_end": None,
        "server_exit_code": srv.proc.returncode, "server_exit_s": round(t_exit - t_fault, 3),
        "events": lost(w.seqs(), None), "events_note": "holes up to the last seq received (the server is gone: nothing to replay)",
        "finals_delivered": w.finals(), "finals_on_disk": final_lines(a["out_dir"]),
        "time_to_end_s": round(t_exit - t_fault, 3),
        "time_to_clean_s": round(t_clean - t_fault, 3),
        "resources_left": {"processes": len(left_pids)},
        "resources_left_total": len(left_pids),
    }
    if left_pids:
        row["pids_left"] = left_pids
        for pid in left_pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return row


def row_stalled_client(stall: dict) -> dict:
    """The stalled-client row comes from the fan-out section's run (see stall.py)."""
    run = stall["runs"]["stalled"]
    cut = run.get("cut") or {}
    healthy = run["healthy_client"]
    view = cut.get("client_view") or {}
    resumed = cut.get("resumed") or {}
    left = {"processes": run["residual"].get("children", 0), **{f"server_{k}": run["residual"].get(k, 0) for k in SERVER_KEYS}}
    released = cut.get("socket_released_at_s")
    if not cut.get("cut_before_eos"):
        sees = "NOT cut off before the session ended"
    elif released is not None:
        sees = f"cut off: the server dropped its socket {released:.1f} s after it stopped reading"
    else:
        sees = "cut off (the socket's release was not observed)"
    if view:
        sees += f"; reading later it gets {view.get('frames')} frames then " + (f"close {view['close_code']}" if view.get("close_code") else "an aborted connection (no close frame)")
    if resumed:
        sees += f"; resuming with its token it gets {resumed.get('events')} more events, {resumed.get('gap_messages')} gaps, close {resumed.get('close')}"
    sees += f"; the other client: every event but {healthy['partials_superseded']} superseded partials, close {healthy['close']}"
    return {
        "fault": "stalled client", "mode": "server",
        "how": f"a client sends hello and never reads (raw socket, SO_RCVBUF {stall['rcvbuf']} B, MSS 1460) while a non-realtime file session on {stall['audio_s']:.0f} s of audio produces events; server `send_queue_limit={stall['send_queue_limit']}`; a second client reads normally; afterwards the stalled client drains its socket and resumes (the run of the fan-out memory figure)",
        "user_sees": sees,
        "end": run["session"]["end"], "expected_end": "clean",
        "events": cut.get("stalled_client_total") or {},
        "other_client_events": {k: healthy[k] for k in ("expected", "received", "duplicates", "in_order", "lost", "partials_superseded")},
        "finals_delivered": None, "finals_on_disk": None,
        "time_to_end_s": released,
        "time_to_clean_s": released,
        "time_note": "the stalled connection's queue and socket are released when tornado gives up on the close handshake, 5 s after the queue overflowed",
        "resources_left": left, "resources_left_total": sum(abs(v) for v in left.values()),
        "cut": cut,
    }
