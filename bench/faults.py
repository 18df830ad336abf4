"""Section 5 of bench/run.py: the fault matrix. Every row injects its fault for real.

For each row we record what a user sees (states, error codes, the WebSocket close code),
events lost (a client's received `seq`s against the session's last `seq`), finals kept on
disk (lines of `final.txt` against finals delivered), resources left once things settle
(processes the row started that still run; the server's — or, for embedded rows, this
process's — fds, sockets, tasks and threads against the row's baseline) and the time from
the fault to a clean state (session ended, its processes gone, counters back to baseline).

Embedded rows run a `Supervisor` on this process's loop (here, and faults_disk.py); server rows
talk to a real `jupyter server` child (see server.py) through REST and WebSockets
(faults_server.py, faults_kernel.py). What the rows share is in faults_common.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Callable

from faults_common import EVENT_TIMEOUT, LOCAL_KEYS, SHORT, SILENCE, alive, collect, ev_story, final_lines, finish_row, is_state, local_counters, local_settle, lost, run_row, tidy, wait_events
from faults_disk import row_disk_full
from faults_kernel import delete_kernel, row_kernel, start_kernel
from faults_server import row_corrupt_audio, row_missing_model_server, row_server_signal, row_stalled_client, row_worker_sigkill, row_ws_resume
from measure import read_pcm

import loquilex_nb as lx
from loquilex_nb.core.config import build_config
from loquilex_nb.core.config import default_model_dir

HANG_GRACE = 1.0
HANG_TERM_GRACE = 1.0


# -- embedded rows ----------------------------------------------------------------------------
async def row_worker_hang(tmp: Path, fault: str) -> dict:
    label = {"hang": "worker hang (`hang`)", "hang,ignore-sigterm": "worker hang, ignores SIGTERM (`hang,ignore-sigterm`)"}[fault]
    base = local_counters()
    from loquilex_nb.testing import faulty_worker

    sup = lx.Supervisor(grace=HANG_GRACE, term_grace=HANG_TERM_GRACE, worker_argv=faulty_worker.argv(*fault.split(",")))
    events: list = []
    stop = asyncio.Event()
    sid = f"fault-{uuid.uuid4().hex[:8]}"
    session = await sup.create(build_config(lx.PushSource(), sid=sid, output_root=tmp), sid=sid)
    reader = asyncio.create_task(collect(session, events, stop))
    try:
        await wait_events(events, lambda e: any(is_state(x, "running") for x in e), EVENT_TIMEOUT, "running")
        await session.feed(read_pcm(SHORT) + SILENCE, "s16le")  # deaf: never decoded
        t_fault = time.monotonic()
        end = await session.stop()
        t_end = time.monotonic()
        await session.close()
        await asyncio.wait_for(reader, 10)
    finally:
        stop.set()
        await sup.shutdown()
        await asyncio.gather(reader, return_exceptions=True)
    left = await local_settle(base, [session.pid])
    row = {
        "fault": label, "mode": "embedded",
        "how": f"`Supervisor(grace={HANG_GRACE:g}, term_grace={HANG_TERM_GRACE:g})`, worker `python -m loquilex_nb.testing.faulty_worker {fault}` (`worker_argv`; from `running` on its main thread is stuck in a native call); after `running` feed speech, then `stop()`",
        "user_sees": ev_story(events), "end": end.kind, "end_detail": end.detail,
        "expected_end": "terminated" if fault == "hang" else "killed",
        "events": lost([e.seq for e in events], session.seq),
        "finals_delivered": sum(1 for e in events if e.type == "asr.final"),
        "finals_on_disk": final_lines(session.config.out_dir),
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)


def row_missing_model_embedded(tmp: Path) -> dict:
    base = local_counters()
    missing = tmp / "no-such-model"
    t = time.monotonic()
    try:
        lx.session(str(SHORT), model=str(missing), output_root=tmp / "missing-model-out")
        outcome, message = "no error", ""
    except ValueError as exc:
        outcome, message = "ValueError", str(exc)
    took = time.monotonic() - t
    now = local_counters()
    left = {"processes": max(0, now["children"] - base["children"]), **{f"bench_{k}": now[k] - base[k] for k in LOCAL_KEYS}}
    return {
        "fault": "missing model dir", "mode": "embedded",
        "how": f"`lx.session(file, model='{missing.name}')` (a directory that does not exist)",
        "user_sees": f"{outcome}: {tidy(message)[:90]}", "end": None, "expected_end": None,
        "raised": outcome == "ValueError", "output_dir_created": (tmp / "missing-model-out").exists(),
        "events": None, "finals_delivered": None, "finals_on_disk": None,
        "time_to_end_s": round(took, 4), "time_to_clean_s": round(took, 4),
        "resources_left": left, "resources_left_total": sum(abs(v) for v in left.values()),
    }


# -- the section ------------------------------------------------------------------------------
async def bench_faults(tmp: Path, log: Callable[[str], None], make_server: Callable, stop_server: Callable, counters: Callable, stall: dict | None) -> dict:
    rows: list[dict] = []

    async def run(name: str, coro_fn) -> None:
        await run_row(rows, log, name, coro_fn)

    emb = tmp / "embedded"
    emb.mkdir(parents=True, exist_ok=True)
    await run("worker hang (`hang`)", lambda: row_worker_hang(emb, "hang"))
    await run("worker hang, ignores SIGTERM", lambda: row_worker_hang(emb, "hang,ignore-sigterm"))
    await run("missing model dir (embedded)", lambda: asyncio.sleep(0, row_missing_model_embedded(emb)))
    await run("output disk full", lambda: row_disk_full(emb, log))

    link = tmp / "model-link"
    if link.is_symlink():
        link.unlink()
    os.symlink(default_model_dir(), link)
    srv = await make_server("faults", {"model": str(link)})
    try:
        await run("worker SIGKILL", lambda: row_worker_sigkill(srv, counters))
        await run("corrupt audio", lambda: row_corrupt_audio(srv, counters))
        await run("missing model dir (server)", lambda: row_missing_model_server(srv, counters, link))
        await run("WebSocket drop and resume", lambda: row_ws_resume(srv, counters, log))
        # the first kernel a jupyter server starts creates its zmq context (threads, fds) for the
        # life of the process: start and delete one first so that is not counted against a row
        t = time.monotonic()
        try:
            kid, kpid = await start_kernel(srv)
            await delete_kernel(srv, kid)
            while alive(kpid) and time.monotonic() - t < 30:
                await asyncio.sleep(0.05)
            log(f"  warm-up kernel started and deleted in {time.monotonic() - t:.1f} s")
        except Exception as exc:
            log(f"  warm-up kernel FAILED: {exc!r}")
        await run("kernel restart", lambda: row_kernel(srv, counters, "restart"))
        await run("kernel SIGKILL", lambda: row_kernel(srv, counters, "kill"))
        await run("server SIGTERM", lambda: row_server_signal(srv, signal.SIGTERM))
    finally:
        await stop_server(srv)
    srv = await make_server("faults-kill", {})
    try:
        await run("server SIGKILL", lambda: row_server_signal(srv, signal.SIGKILL))
    finally:
        await stop_server(srv)
    if stall is not None:
        await run("stalled client", lambda: asyncio.sleep(0, row_stalled_client(stall)))
    order = ["worker SIGKILL", "worker hang (`hang`)", "worker hang, ignores SIGTERM (`hang,ignore-sigterm`)", "kernel SIGKILL", "kernel restart", "server SIGTERM", "server SIGKILL", "WebSocket drop and resume", "stalled client", "corrupt audio", "missing model dir", "output disk full"]
    rows.sort(key=lambda r: (order.index(r["fault"]) if r["fault"] in order else len(order), r.get("mode", "")))
    return {
        "rows": rows,
        "all_clean": all(r.get("resources_left_total") == 0 for r in rows),
        "disk_full_method": next((r.get("method") for r in rows if r["fault"] == "output disk full"), None),
    }
