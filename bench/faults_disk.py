"""The fault row of a full output disk: a small tmpfs when we may mount one, else RLIMIT_FSIZE."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

from faults_common import (
    EVENT_TIMEOUT,
    SHORT,
    SILENCE,
    collect,
    ev_story,
    final_lines,
    finish_row,
    is_state,
    local_counters,
    local_settle,
    lost,
    tidy,
    wait_events,
)
from measure import read_pcm

import loquilex_nb as lx
from loquilex_nb.core.config import build_config

TMPFS_SIZE = "256k"
FSIZE_LIMIT = 100  # bytes per file for the RLIMIT_FSIZE fallback: captions.vtt of one short final fits, of two does not


def _mount_tmpfs(path: Path) -> tuple[bool, str]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False, "not root or no mount(8)"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755", "tmpfs", str(path)], capture_output=True, text=True, timeout=10)
    return r.returncode == 0, (r.stderr or r.stdout).strip()


def _umount(path: Path) -> None:
    for _ in range(20):
        r = subprocess.run(["umount", str(path)], capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.1)


def _fill(path: Path) -> int:
    """Write a filler file until the filesystem says ENOSPC; returns the bytes written."""
    n = 0
    with open(path / ".filler", "wb", buffering=0) as f:
        block = b"\0" * 4096
        while True:
            try:
                n += f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return n


RLIMIT_WORKER = (
    "import resource, runpy, signal, sys; "
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "  # else the write kills the worker instead of failing with EFBIG
    "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
    "sys.argv = ['loquilex_nb.worker']; runpy.run_module('loquilex_nb.worker', run_name='__main__')"
)


async def row_disk_full(tmp: Path, log: Callable[[str], None]) -> dict:
    mnt = tmp / "disk-full"
    mnt.mkdir()
    forced = os.environ.get("BENCH_DISK_FULL", "")  # "rlimit": skip the tmpfs even as root
    mounted, why = (False, "BENCH_DISK_FULL=rlimit") if forced == "rlimit" else _mount_tmpfs(mnt)
    method = f"tmpfs (`mount -t tmpfs -o size={TMPFS_SIZE}`), filled with a filler file after the first final" if mounted else f"RLIMIT_FSIZE={FSIZE_LIMIT} B on the worker (wrapper `worker_argv`, SIGXFSZ ignored): the captions of the second final no longer fit"
    if not mounted:
        log(f"  disk full: no tmpfs ({why}); using RLIMIT_FSIZE on the worker")
    base = local_counters()
    argv = None if mounted else [sys.executable, "-c", RLIMIT_WORKER, str(FSIZE_LIMIT)]
    sup = lx.Supervisor(worker_argv=argv)
    events: list = []
    stop = asyncio.Event()
    sid = f"fault-{uuid.uuid4().hex[:8]}"
    filled = 0
    survived = False
    pcm = read_pcm(SHORT)
    session = None
    try:
        session = await sup.create(build_config(lx.PushSource(), sid=sid, output_root=mnt), sid=sid)
        reader = asyncio.create_task(collect(session, events, stop))
        try:
            await wait_events(events, lambda e: any(is_state(x, "running") for x in e), EVENT_TIMEOUT, "running")
            await session.feed(pcm + SILENCE, "s16le")
            await wait_events(events, lambda e: any(x.type == "asr.final" for x in e), EVENT_TIMEOUT, "first final")
            if mounted:
                filled = _fill(mnt)
            t_fault = time.monotonic()
            try:
                await session.feed(pcm + SILENCE, "s16le")  # the second utterance cannot be written
            except Exception:
                pass
            # a full disk is not fatal: the caption-write error is reported, the next final
            # still reaches the client as an event, and the session stops cleanly when asked
            await wait_events(events, lambda e: any(x.type == "error" and (x.data or {}).get("code") == "caption-write" for x in e), EVENT_TIMEOUT, "caption-write error")
            await wait_events(events, lambda e: sum(x.type == "asr.final" for x in e) >= 2, EVENT_TIMEOUT, "second final")
            survived = True
            await session.stop()
            t_end = time.monotonic()
            await asyncio.wait_for(reader, 10)
        finally:
            stop.set()
            await asyncio.gather(reader, return_exceptions=True)
        end = session.end
        on_disk = final_lines(session.config.out_dir)
    finally:
        await sup.shutdown()
        try:
            (mnt / ".filler").unlink()
        except OSError:
            pass
        if mounted:
            _umount(mnt)
    left = await local_settle(base, [session.pid])
    finals = sum(1 for e in events if e.type == "asr.final")
    errors = [{k: v for k, v in (e.data or {}).items() if k != "stderr_tail"} for e in events if e.type == "error"]
    row = {
        "fault": "output disk full", "mode": "embedded", "method": "tmpfs" if mounted else "rlimit_fsize",
        "how": f"{method}; a push session, short.wav spoken twice",
        "user_sees": ev_story(events) + ("; the session went on (the second final reached the client as an event) and stopped cleanly when asked" if survived else ""),
        "end": end.kind if end else None, "end_detail": tidy(end.detail) if end else None,
        "expected_end": "clean",
        "errors": errors,
        "filler_bytes": filled,
        "events": lost([e.seq for e in events], session.seq),
        "finals_delivered": finals, "finals_on_disk": on_disk,
        "utterances_spoken": 2, "utterances_delivered_or_on_disk": max(finals, on_disk or 0),
        "time_to_end_s": round(t_end - t_fault, 3),
    }
    return finish_row(row, left, t_fault)
