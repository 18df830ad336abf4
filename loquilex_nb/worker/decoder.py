"""One Whisper decode of a short stretch of audio, in a window sized to it.

faster-whisper pads every decode to 30 s, so a 3 s utterance costs as much as 30 s of
audio. CTranslate2's encoder also takes shorter windows; a window barely longer than the
speech makes Whisper hallucinate repetitions, so the window is kept at about twice the
speech, the token budget follows the audio length, and a repetitive or truncated-looking
result is decoded again in the full 30 s window.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..core.config import SAMPLE_RATE, AsrConfig

FULL_WINDOW_S = 30
MIN_WINDOW_S = 4
TOKENS_PER_SECOND = 6.0
TOKEN_SLACK = 10
MAX_COMPRESSION_RATIO = 2.4
MAX_PROMPT_TOKENS = 96
TS_MIN_S = 10.0  # a decode this long uses timestamp tokens: long-form is how Whisper was trained, and it does better so


@dataclass
class Word:
    word: str
    start: float
    end: float
    probability: float

    def as_dict(self, offset: float) -> dict:
        return {
            "word": self.word.strip(),
            "t0": round(self.start + offset, 3),
            "t1": round(self.end + offset, 3),
            "p": round(self.probability, 3),
        }


@dataclass
class Hypothesis:
    text: str
    words: list[Word] = field(default_factory=list)
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0
    window_s: int = 0
    retried: bool = False
    suspicious: bool = False  # looked like a loop or a cut-off in its window, and was not decoded again


def window_for(duration: float) -> int:
    return int(min(FULL_WINDOW_S, max(MIN_WINDOW_S, math.ceil(2.0 * duration + 1.0))))


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(1, len(zlib.compress(data)))


def first_repeat(tokens: list[int], min_span: int = 3) -> int | None:
    """Index where an immediate repeat of a span of >= min_span tokens begins, if any.

    "open the door. open the door" is Whisper looping on cut-off audio, not speech.
    """
    n_tokens = len(tokens)
    for i in range(n_tokens):
        for n in range(min_span, (n_tokens - i) // 2 + 1):
            if tokens[i : i + n] == tokens[i + n : i + 2 * n]:
                return i + n
    return None


class WhisperDecoder:
    def __init__(self, cfg: AsrConfig) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        self.cfg = cfg
        self.model = WhisperModel(
            cfg.model,
            device="cpu",
            compute_type=cfg.compute_type,
            cpu_threads=cfg.cpu_threads,
            num_workers=1,
            local_files_only=True,
        )
        multilingual = self.model.model.is_multilingual
        language = cfg.language if multilingual else "en"
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, multilingual, task="transcribe", language=language)

    def decode(self, audio: np.ndarray, context: str = "", words: bool = False, beam: int | None = None, retry: bool = True,
               window: int | None = None) -> Hypothesis:
        """`retry`: decode a suspicious result again in a wider window (finals and revisions);
        a partial is only trimmed and marked `suspicious`, its caller decides. `window`: the
        encoder's window in seconds instead of the one the audio's length calls for."""
        duration = len(audio) / SAMPLE_RATE
        if duration < 0.1:
            return Hypothesis("")
        window = window_for(duration) if window is None else int(min(FULL_WINDOW_S, max(window, math.ceil(duration))))
        hyp, tokens, enc, frames = self._decode_in(audio, context, window, beam)
        if words and window < FULL_WINDOW_S and self._suspicious(hyp, tokens):
            if retry:
                hyp, tokens, enc, frames = self._decode_in(audio, context, min(FULL_WINDOW_S, 2 * window + 2), beam)
                hyp.retried = True
            else:
                hyp.suspicious = True
        cut = first_repeat(tokens)
        if cut is not None:
            tokens = tokens[:cut]
            hyp.text = self.tokenizer.decode(tokens).strip()
        if self._is_silence(hyp):
            return Hypothesis("", window_s=hyp.window_s, retried=hyp.retried, suspicious=hyp.suspicious)
        if words and tokens:
            hyp.words = self._align(tokens, enc, frames)
        return hyp

    def _decode_in(self, audio: np.ndarray, context: str, window: int, beam: int | None = None):
        from faster_whisper.audio import pad_or_trim

        n_frames = window * 100
        feats = self.model.feature_extractor(audio, chunk_length=window)
        content_frames = min(feats.shape[-1], n_frames)
        feats = pad_or_trim(feats, n_frames)
        enc = self.model.encode(feats)
        prompt = self._prompt(context, timestamps=len(audio) / SAMPLE_RATE >= TS_MIN_S)
        budget = int(len(audio) / SAMPLE_RATE * TOKENS_PER_SECOND) + TOKEN_SLACK
        result = self.model.model.generate(
            enc,
            [prompt],
            beam_size=max(beam or 1, self.cfg.beam_size),
            max_length=min(self.model.max_length, len(prompt) + budget),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        tokens = [t for t in result.sequences_ids[0] if t < self.tokenizer.eot]
        text = self.tokenizer.decode(tokens).strip()
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1) if tokens else -10.0
        hyp = Hypothesis(text, avg_logprob=avg_logprob, no_speech_prob=result.no_speech_prob, window_s=window)
        hyp._budget_hit = len(tokens) >= budget  # type: ignore[attr-defined]
        return hyp, tokens, enc, content_frames

    def _prompt(self, context: str, timestamps: bool = False) -> list[int]:
        previous = self.tokenizer.encode(" " + context.strip())[-MAX_PROMPT_TOKENS:] if context.strip() else []
        return self.model.get_prompt(self.tokenizer, previous, without_timestamps=not timestamps)

    @staticmethod
    def _suspicious(hyp: Hypothesis, tokens: list[int]) -> bool:
        if getattr(hyp, "_budget_hit", False) or first_repeat(tokens) is not None:
            return True
        return len(hyp.text) > 40 and compression_ratio(hyp.text) > MAX_COMPRESSION_RATIO

    @staticmethod
    def _is_silence(hyp: Hypothesis) -> bool:
        return not hyp.text or (hyp.no_speech_prob > 0.6 and hyp.avg_logprob < -1.0)

    def _align(self, tokens: list[int], enc, frames: int) -> list[Word]:
        try:
            aligned = self.model.find_alignment(self.tokenizer, [tokens], enc, frames)[0]
        except Exception:  # alignment is a nicety: the text stands without it
            return []
        words: list[Word] = []
        for w in aligned:
            text = w["word"]
            if not text.strip():
                continue
            if words and not any(ch.isalnum() for ch in text):
                # punctuation belongs to the word before it, not to the next utterance
                words[-1].word += text.strip()
                continue
            words.append(Word(text, float(w["start"]), float(w["end"]), float(w["probability"])))
        return words
