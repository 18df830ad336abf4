"""`make bench-quick` must not rot: run `bench/run.py --quick` into a temporary directory.

The bench runs as a subprocess (its own jupyter servers, kernels and workers), writes only
under `--out`, and must leave no process behind. Its JSON must have every section, and every
row of the fault matrix must report nothing left behind and no event lost.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent
RUN = REPO / "bench" / "run.py"
TIMEOUT = 400  # the quick run takes ~100 s on 2 idle cores; a busy shared machine is slower
SECTIONS = ("stopping", "asr", "fanout", "scale", "faults")
FAULTS = {
    "worker SIGKILL", "worker hang (`hang`)", "worker hang, ignores SIGTERM (`hang,ignore-sigterm`)",
    "kernel SIGKILL", "kernel restart", "server SIGTERM", "server SIGKILL", "WebSocket drop and resume",
    "stalled client", "corrupt audio", "missing model dir", "output disk full",
    "flooding client", "150 connections", "symlink swap",
}


def bench_processes(marker: str) -> list[psutil.Process]:
    """Processes started by the bench run: they all inherit its TMPDIR."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and p.environ().get("TMPDIR") == marker and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass


def docs_state() -> dict[str, float | None]:
    out = {}
    for name in ("BENCHMARKS.md", "benchmarks.json"):
        path = REPO / "docs" / name
        out[name] = path.stat().st_mtime if path.exists() else None
    return out


@pytest.mark.timeout(TIMEOUT + 60)
def test_bench_quick(tmp_path):
    out = tmp_path / "out"
    work = tmp_path / "tmp"  # the bench's temporary files, and a marker in its children's environment
    work.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", LOQUILEX_MODE="embedded", TMPDIR=str(work))
    docs_before = docs_state()
    log_path = tmp_path / "bench.log"
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(RUN), "--quick", "--out", str(out)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            kill_all(bench_processes(str(work)))
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"bench --quick did not finish in {TIMEOUT} s:\n{log_path.read_text(errors='replace')[-4000:]}")
    took = time.monotonic() - started
    text = log_path.read_text(errors="replace")
    assert code == 0, f"bench --quick exited with {code}:\n{text[-4000:]}"

    # nothing it started outlives it (workers end by parent-death signal within a moment)
    deadline = time.monotonic() + 10
    while (left := bench_processes(str(work))) and time.monotonic() < deadline:
        time.sleep(0.1)
    kill_all(left)
    assert not left, f"processes left by the bench: {[(p.pid, p.cmdline()) for p in left if p.is_running()]}"

    # it wrote only where it was told to
    assert docs_state() == docs_before, "bench --quick --out must not touch docs/"
    results = json.loads((out / "results.json").read_text())
    assert json.loads((out / "benchmarks.json").read_text()) == results
    page = (out / "BENCHMARKS.md").read_text()

    assert results["mode"] == "quick"
    for section in SECTIONS:
        assert section in results, f"section {section!r} missing"
        assert "error" not in results[section], f"{section}: {results[section]['error']}"
    assert set(results["fanout"]) >= {"throughput", "stalled_client"}
    assert set(results["scale"]) >= {"sessions", "cycles"}
    for part in (results["fanout"]["throughput"], results["fanout"]["stalled_client"], results["scale"]["sessions"], results["scale"]["cycles"], results["asr"]["server_latency"]):
        assert "error" not in part, part["error"]
    for key in ("ours_cooperative", "ours_ignores_sigterm", "jupyter_client_now_false", "jupyter_client_now_true", "asyncio_terminate"):
        assert results["stopping"]["variants"][key]["latency_s"]["n"] >= 1, key
    assert results["stopping"]["variants"]["ours_ignores_sigterm"]["all_killed"]

    rows = results["faults"]["rows"]
    assert {r["fault"] for r in rows} == FAULTS
    for row in rows:
        assert "error" not in row, f"{row['fault']}: {row['error']}"
        assert row["resources_left_total"] == 0, f"{row['fault']} left {row['resources_left']}"
        if row.get("events"):
            assert row["events"]["lost"] == 0, f"{row['fault']} lost events: {row['events']}"
    assert results["faults"]["all_clean"]

    for name, rel in results["plots"].items():
        assert not name.endswith("_error"), f"plot {name}: {rel}"
        assert (out / rel).stat().st_size > 1000, rel
        assert rel in page
    for heading in ("## 1. Stopping", "## 2. Streaming ASR", "## 3. Fan-out", "## 4. Scale", "## 5. Fault matrix"):
        assert heading in page
    print(f"bench --quick took {took:.0f} s (bench's own count {results['elapsed_s']:.0f} s)")
