"""Small helpers for bench/run.py: statistics, WER, CPU sampling of a worker, machine facts, PCM files."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import wave
from pathlib import Path
from typing import Sequence

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent


def pct(values: Sequence[float], q: float) -> float | None:
    """Percentile with linear interpolation (numpy's default); None for no data."""
    return None if not values else float(np.percentile(np.asarray(values, dtype=float), q))


def summary(values: Sequence[float]) -> dict:
    vals = [float(v) for v in values]
    return {
        "n": len(vals),
        "p50": pct(vals, 50),
        "p90": pct(vals, 90),
        "p99": pct(vals, 99),
        "min": min(vals) if vals else None,
        "max": max(vals) if vals else None,
        "mean": statistics.fmean(vals) if vals else None,
    }


def normalise(text: str) -> str:
    # same normalisation as tests/fixtures/measure_wer.py: case and punctuation are not errors
    text = re.sub(r"[^\w\s']", " ", text.lower())
    return " ".join(text.split())


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return float(jiwer.wer(normalise(reference), normalise(hypothesis)))


def reference_for(wav: Path) -> str:
    return " ".join(line.strip() for line in wav.with_suffix(".txt").read_text(encoding="utf-8").splitlines() if line.strip())


def audio_seconds(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        return container.duration / av.time_base


class CpuSampler:
    """Polls a worker's user+system CPU seconds in a thread; `mark()` samples on demand.

    A process's CPU times vanish once it is reaped, so the last successful sample is kept;
    call `mark()` at the moments that matter (running, finished) for exact figures.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.last = 0.0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="bench-cpu-sampler")
        self._thread.start()

    def mark(self) -> float:
        try:
            t = self.proc.cpu_times()
            value = t.user + t.system
        except psutil.Error:
            value = 0.0
        with self._lock:
            self.last = max(self.last, value)
            return self.last

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.mark()

    def close(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.last


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {}
    for mod in ("ctranslate2", "faster_whisper", "numpy", "av"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            versions[mod] = None
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds"),
        "nproc": usable,
        "cpu_model": model,
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "platform": platform.platform(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "versions": versions,
        "commit": commit + ("-dirty" if dirty else ""),
        "dirty": dirty,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def read_pcm(path: Path) -> bytes:
    with wave.open(str(path)) as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (16000, 1, 2):
            raise RuntimeError(f"{path} is not 16 kHz mono int16")
        return w.readframes(w.getnframes())


def concat_wav(out: Path, parts: list[Path]) -> float:
    """One longer 16 kHz mono int16 file (so one session has many events); returns seconds."""
    pcm = b"".join(read_pcm(p) for p in parts)
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm)
    return len(pcm) / 32000
