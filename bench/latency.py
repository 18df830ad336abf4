"""End-to-end final-caption latency of a push session fed in real time over the WebSocket."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from measure import REPO, read_pcm, summary
from server import CHUNK_S, SILENCE_TAIL_S, SPEECH, JupyterServer, close_after_eos


async def bench_latency(srv: JupyterServer, log: Callable, wav: Path = SPEECH) -> dict:
    pcm = read_pcm(wav)
    step = int(16000 * CHUNK_S) * 2
    chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    audio_chunks = len(chunks)
    chunks += [b"\0" * step] * int(round(SILENCE_TAIL_S / CHUNK_S))
    info = await srv.api("POST", "sessions", {"source": {"kind": "push"}, "formats": ["txt"]})
    sid = info["id"]
    ws = await srv.ws(sid)
    await ws.write_message(json.dumps({"type": "hello"}))
    running = asyncio.Event()
    finals: list[dict] = []
    others = Counter()
    sent_at: list[float] = []
    stop_sent: list[float] = []
    close: dict = {}

    async def reader() -> None:
        while True:
            msg = await ws.read_message()
            now = time.monotonic()
            if msg is None:
                close.update(code=f"{ws.close_code} before eos", reason=ws.close_reason)
                return
            env = json.loads(msg)
            others[env["type"]] += 1
            if env["type"] == "status" and (env["data"].get("data") or {}).get("state") == "running":
                running.set()
            elif env["type"] == "asr.final":
                finals.append({"recv": now, "env": env, "after_stop": bool(stop_sent)})
            elif env["type"] == "eos":
                close["code"] = await close_after_eos(ws)
                return

    rtask = asyncio.create_task(reader())
    try:
        await asyncio.wait_for(running.wait(), 60)
        t_start = time.monotonic()
        for i, chunk in enumerate(chunks):
            delay = t_start + i * CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(time.monotonic())
            await ws.write_message(chunk, binary=True)
        await asyncio.sleep(CHUNK_S)
        stop_sent.append(time.monotonic())
        await ws.write_message(json.dumps({"type": "stop"}))
        await asyncio.wait_for(rtask, 60)
    finally:
        rtask.cancel()
        ws.close()
    e2e, worker, delivery, late, rows, minus = [], [], [], [], [], []
    for f in finals:
        d = f["env"]["data"]
        t1 = d.get("t1") or 0.0
        idx = min(len(sent_at) - 1, max(0, math.ceil(round(t1 / CHUNK_S, 6)) - 1))
        lat = f["recv"] - sent_at[idx]
        w = (d.get("data") or {}).get("latency")
        rows.append({"t1": t1, "e2e_s": round(lat, 4), "worker_s": w, "delivery_s": round(f["recv"] - f["env"]["t_mono"], 4), "reason": (d.get("data") or {}).get("reason"), "after_stop": f["after_stop"]})
        if f["after_stop"]:
            late.append(lat)
            continue
        e2e.append(lat)
        delivery.append(f["recv"] - f["env"]["t_mono"])
        if w is not None:
            worker.append(w)
            minus.append(lat - w)
    pacing = [sent_at[i] - (sent_at[0] + i * CHUNK_S) for i in range(len(sent_at))]
    log(f"  latency: {len(e2e)} finals, e2e p50 {summary(e2e)['p50']}, worker p50 {summary(worker)['p50']}")
    return {
        "file": str(wav.relative_to(REPO)),
        "audio_s": audio_chunks * CHUNK_S,
        "chunks": len(chunks),
        "silence_tail_s": SILENCE_TAIL_S,
        "finals": len(finals),
        "finals_after_stop": len(late),
        "e2e_s": summary(e2e),
        "worker_latency_s": summary(worker),
        "delivery_s": summary(delivery),
        "e2e_minus_worker_s": summary(minus),
        "send_lag_s": summary(pacing),
        "event_types": dict(others),
        "close": close,
        "per_final": rows,
    }
