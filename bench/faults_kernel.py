"""Fault rows with a real kernel started by the server: the kernel restarted or SIGKILLed under
the session it owns."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import psutil
from faults_common import alive, final_lines, finish_row, server_lost, server_settle
from faults_server import push_session, speak


def kernel_pids(server_pid: int, kid: str) -> list[int]:
    out = []
    try:
        for c in psutil.Process(server_pid).children(recursive=True):
            try:
                if any(kid in part for part in c.cmdline()):
                    out.append(c.pid)
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


def _wait_kernel_ready(connection_file: Path, timeout: float) -> None:
    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(connection_file))
    kc.load_connection_file()
    # No heartbeat channel: on a loaded machine one late beat makes wait_for_ready report
    # "Kernel died before replying to kernel_info" for a kernel that is merely slow; the
    # timeout bounds the wait, and the caller already found the kernel's process.
    kc.start_channels(hb=False)
    try:
        kc.wait_for_ready(timeout=timeout)
    finally:
        kc.stop_channels()


async def start_kernel(srv) -> tuple[str, int]:
    """A real ipykernel started by the server (`POST api/kernels`), answering kernel_info."""
    code, body = await srv.rest("POST", "api/kernels", {"name": "python3"})
    if code not in (200, 201):
        raise RuntimeError(f"POST api/kernels -> {code}: {body}")
    kid = body["id"]
    deadline = time.monotonic() + 60
    cf = srv.runtime / f"kernel-{kid}.json"
    while not (cf.exists() and kernel_pids(srv.proc.pid, kid)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"kernel {kid}: no process or connection file {cf} after 60 s")
        await asyncio.sleep(0.05)
    await asyncio.get_running_loop().run_in_executor(None, _wait_kernel_ready, cf, max(1.0, deadline - time.monotonic()))
    return kid, kernel_pids(srv.proc.pid, kid)[0]


async def delete_kernel(srv, kid: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code, _ = await srv.rest("DELETE", f"api/kernels/{kid}")
        if code in (204, 404):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"DELETE kernel {kid} -> {code}")
        await asyncio.sleep(0.2)  # 500 while the restarter is mid-restart


async def row_kernel(srv, counters, how: str) -> dict:
    base = counters(await srv.resources())
    kid, kpid = await start_kernel(srv)
    info, w = await push_session(srv, {"kernel_id": kid})
    await speak(w)
    seen = {kpid}
    t_fault = time.monotonic()
    if how == "restart":
        code, body = await srv.rest("POST", f"api/kernels/{kid}/restart", "")
        if code != 200:
            raise RuntimeError(f"restart -> {code}: {body}")
    else:
        os.kill(kpid, signal.SIGKILL)
    await w.wait_closed()
    t_end = time.monotonic()
    while alive(info["pid"]) and time.monotonic() - t_end < 10:
        await asyncio.sleep(0.05)
    t_worker_gone = time.monotonic()
    end = await srv.api("GET", f"sessions/{info['id']}")
    await w.aclose()
    # the kernel itself lives on (restarted under the same id); the user shuts it down later, once
    # it is up again (deleting a kernel mid-start interrupts its imports: noise in the server's log)
    deadline = time.monotonic() + 30
    while not (set(kernel_pids(srv.proc.pid, kid)) - seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    seen.update(kernel_pids(srv.proc.pid, kid))
    cf = srv.runtime / f"kernel-{kid}.json"
    try:
        await asyncio.get_running_loop().run_in_executor(None, _wait_kernel_ready, cf, 30.0)
    except Exception:
        pass
    await delete_kernel(srv, kid)
    left = await server_settle(srv, base, [info["pid"], *seen], counters)
    row = {
        "fault": "kernel restart" if how == "restart" else "kernel SIGKILL", "mode": "server",
        "how": ("a real ipykernel started with `POST api/kernels` owns a push session (`kernel_id`); after its first final, "
                + ("`POST api/kernels/{id}/restart`" if how == "restart" else "`kill -9` the kernel process (jupyter's restarter revives it under the same id)"))
        + "; then the kernel is deleted",
        "user_sees": w.story(), "end": end["end"]["kind"], "end_detail": end["end"]["detail"], "expected_end": "clean",
        "events": await server_lost(srv, w, info["id"], base, counters), "finals_delivered": w.finals(), "finals_on_disk": final_lines(end["out_dir"]),
        "time_to_end_s": round(t_end - t_fault, 3), "worker_gone_after_s": round(t_worker_gone - t_fault, 3),
        "kernel_processes_seen": len(seen),
        "time_note": "time to clean = fault → the session ended and its worker is gone; resources are counted after the kernel was deleted, against the baseline before it was started",
    }
    row = finish_row(row, left, t_fault)
    row["kernel_deleted_and_settled_s"] = row["time_to_clean_s"]
    row["time_to_clean_s"] = row["worker_gone_after_s"]
    return row
