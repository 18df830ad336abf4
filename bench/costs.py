"""Where a live stream's CPU goes, and what one decode costs on this host (not a test).

Two parts, both with the shipped model (tiny.en int8, one thread):
- unit costs: the encoder for windows of 4-30 s, one decoder step (a generated token, and a
  token forced as a prefix: forcing saves nothing, CTranslate2 steps through it), and the
  word alignment;
- the breakdown of one file's live schedule (the recogniser in-process, as `live.simulate`):
  CPU per audio second of the partials, the finals decoded anew or again with left context,
  and the revision blocks, told apart by how the recogniser calls the decoder (and, for the
  left-context decodes, by its own count).
From them, the floor of the design: partials at the cadence that gives 2 per second of
speech, each one decode of the utterance so far, before any final or revision.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def _cpu(fn, n: int = 3) -> tuple[float, object]:
    t = time.process_time()
    for _ in range(n):
        out = fn()
    return (time.process_time() - t) / n, out


def unit_costs(decoder, audio: np.ndarray) -> dict:
    from faster_whisper.audio import pad_or_trim

    model, tok = decoder.model, decoder.tokenizer
    enc_cost = {}
    for window in (4, 8, 15, 20, 30):
        feats = pad_or_trim(model.feature_extractor(audio[: window * 16000], chunk_length=window), window * 100)
        enc_cost[window], _ = _cpu(lambda f=feats: model.encode(f))
    feats = pad_or_trim(model.feature_extractor(audio[: 8 * 16000], chunk_length=8), 800)
    enc = model.encode(feats)
    base = model.get_prompt(tok, [], without_timestamps=True)
    one, _ = _cpu(lambda: model.model.generate(enc, [base], beam_size=1, max_length=len(base) + 1))
    full_cost, res = _cpu(lambda: model.model.generate(enc, [base], beam_size=1, max_length=len(base) + 40))
    tokens = [t for t in res[0].sequences_ids[0] if t < tok.eot]
    n = len(tokens)
    step = (full_cost - one) / max(1, n)
    half = n // 2
    forced_cost, _ = _cpu(lambda: model.model.generate(enc, [base + tokens[:half]], beam_size=1, max_length=len(base) + 40))
    align, _ = _cpu(lambda: model.find_alignment(tok, [tokens], enc, 800))
    return {
        "encode_s_by_window": enc_cost,
        "decoder_step_s": step,
        "tokens_in_8s": n,
        "decode_8s_s": full_cost,
        "decode_8s_half_forced_s": forced_cost,
        "align_8s_s": align,
    }


class _Attributing:
    """The real decoder; each call's CPU booked to what the recogniser asked for."""

    def __init__(self, real) -> None:
        self.real = real
        self.cpu = {"partials": 0.0, "finals": 0.0, "revisions": 0.0}
        self.calls = {k: 0 for k in self.cpu}

    def decode(self, audio, context="", words=False, beam=None, retry=True, window=None):
        kind = "revisions" if beam else "partials" if not retry else "finals"
        t = time.process_time()
        hyp = self.real.decode(audio, context, words=words, beam=beam, retry=retry, window=window)
        self.cpu[kind] += time.process_time() - t
        self.calls[kind] += 1
        return hyp


def breakdown(path: Path, decoder, cfg) -> dict:
    from live import audio_seconds, simulate

    attributing = _Attributing(decoder)
    sim = simulate(path, attributing, cfg)
    dur = audio_seconds(path)
    # the closing pass runs once when the file ends: a cost per session, not per second
    attributing.cpu["revisions"] -= sim["closing_cpu_s"]
    # a final decoded again with left context (`final_context`) asks for what a partial does
    # (no retry, no beam): the recogniser counts those itself
    attributing.cpu["partials"] -= sim["context_cpu_s"]
    attributing.cpu["finals"] += sim["context_cpu_s"]
    attributing.calls["partials"] -= sim["context_decodes"]
    attributing.calls["finals"] += sim["context_decodes"]
    return {
        "file": path.stem,
        "closing_cpu_s": sim["closing_cpu_s"],
        "cores": {k: v / dur for k, v in attributing.cpu.items()},
        "calls": attributing.calls,
        "per_partial_s": attributing.cpu["partials"] / max(1, attributing.calls["partials"]),
        "partials_per_s": sim["partials_per_s"],
    }


def costs(path: Path, speech_s: float) -> dict:
    from loquilex_nb.core.audio import iter_file_chunks
    from loquilex_nb.core.config import build_asr_config
    from loquilex_nb.worker.decoder import WhisperDecoder

    cfg = build_asr_config({})
    decoder = WhisperDecoder(cfg)
    audio = np.concatenate(list(iter_file_chunks(str(path), 0.1)))
    units = unit_costs(decoder, audio)
    parts = breakdown(path, decoder, cfg)
    dur = len(audio) / 16000
    # the design's floor: 2 partials per second of speech at the measured cost of a partial
    parts["partials_floor_cores"] = 2.0 * speech_s / dur * parts["per_partial_s"]
    return {"units": units, "breakdown": parts}


def markdown(res: dict) -> str:
    u, b = res["units"], res["breakdown"]
    enc = ", ".join(f"{w} s: {c * 1000:.0f} ms" for w, c in u["encode_s_by_window"].items())
    c = b["cores"]
    return (
        "### Where a stream's CPU goes (one thread, tiny.en int8)\n\n"
        f"- Encoder, by window: {enc}.\n"
        f"- Decoder: {u['decoder_step_s'] * 1000:.1f} ms per token; 8 s of speech ({u['tokens_in_8s']} tokens) "
        f"{u['decode_8s_s'] * 1000:.0f} ms, the same with its first half forced as a prefix "
        f"{u['decode_8s_half_forced_s'] * 1000:.0f} ms (no saving: the decoder steps through a prefix too); "
        f"word alignment {u['align_8s_s'] * 1000:.0f} ms.\n"
        f"- `{b['file']}` in the recogniser (every tick taken): partials {c['partials']:.3f} cores "
        f"({b['calls']['partials']} decodes, {b['per_partial_s'] * 1000:.0f} ms each), finals decoded anew or with left context "
        f"{c['finals']:.3f} ({b['calls']['finals']}), revision blocks {c['revisions']:.3f} ({b['calls']['revisions']} "
        f"decodes, with the closing pass's {b.get('closing_cpu_s', 0.0):.2f} s once at the end, not in that rate).\n"
        f"- The floor of this design: 2 partials per second of speech at that cost per partial is "
        f"**{b['partials_floor_cores']:.2f} cores** before any final or revision. A partial re-decodes the utterance so "
        "far (two decodes must agree for a final without silence, as in whisper_streaming), so its cost is one encoder "
        "pass over about twice the utterance plus one decoder step per token of it."
    )
