"""How often two consecutive partial decodes agree, per room condition (why finals come late).

A final without silence needs two decodes of the growing utterance to agree on its words
(worker/agreement.py). Over a background that never pauses, tiny.en's decodes of nearly the
same audio differ, and the final waits. This runs the recogniser in-process over room files
(as `live.py --sim`) and reports, per file: partial decodes, the share whose words agree with
the previous decode's on at least one leading word, the mean share of a decode's words agreed,
and the final lag (audio after the final's end when it was emitted) per trigger.

    .venv/bin/python bench/agreement.py [--only harvard_clean,harvard_babble8,...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from live import CONDITIONS, make_audio  # noqa: E402
from measure import REPO  # noqa: E402


def measure(path: Path, decoder, cfg) -> dict:
    from loquilex_nb.core.audio import iter_file_chunks
    from loquilex_nb.worker import streaming

    pairs: list[tuple[int, int]] = []  # (words agreed, words in the decode)
    lags: dict[str, list[float]] = defaultdict(list)
    plain = streaming.agreed_prefix

    def counted(prev, cur):
        n = plain(prev, cur)
        if prev:  # the first partial of an utterance has nothing to agree with
            pairs.append((n, len(cur)))
        return n

    def emit(type_, **f):
        if type_ == "asr.final":
            lags[f["data"]["reason"]].append(f["data"]["audio_lag"])

    streaming.agreed_prefix = counted  # counting only: the function itself is unchanged
    try:
        rec = streaming.StreamingRecognizer(decoder, cfg, emit, live=True)
        for chunk in iter_file_chunks(str(path), 0.1):
            rec.push(chunk)
            rec.tick(False)
            rec.tick(False)
    finally:
        streaming.agreed_prefix = plain
    return {
        "pairs": len(pairs),
        "agree_any": round(sum(1 for n, _ in pairs if n) / max(1, len(pairs)), 3),
        "agreed_share": round(statistics.fmean(n / m for n, m in pairs if m) if pairs else 0.0, 3),
        "lag_p50_by_reason": {k: round(statistics.median(v), 2) for k, v in sorted(lags.items())},
        "finals_by_reason": {k: len(v) for k, v in sorted(lags.items())},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(f"harvard_{c}" for c in CONDITIONS))
    a = ap.parse_args()
    from loquilex_nb.core.config import build_asr_config
    from loquilex_nb.worker.decoder import WhisperDecoder

    audio = make_audio(REPO / "bench-out" / "room-audio")
    cfg = build_asr_config({})
    decoder = WhisperDecoder(cfg)
    print("| file | partial pairs | agree on ≥ 1 word | share of words agreed | final lag p50 by trigger (audio s) |")
    print("|---|---|---|---|---|")
    for name in a.only.split(","):
        r = measure(audio / f"{name}.wav", decoder, cfg)
        lag = ", ".join(f"{k} {v} (n={r['finals_by_reason'][k]})" for k, v in r["lag_p50_by_reason"].items())
        print(f"| {name} | {r['pairs']} | {r['agree_any']:.0%} | {r['agreed_share']:.0%} | {lag} |")
        print(json.dumps({name: r}), file=sys.stderr)


if __name__ == "__main__":
    main()
