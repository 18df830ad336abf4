"""When to commit live text without waiting for silence (LocalAgreement, as whisper_streaming).

A word is trusted once two consecutive decodes of the growing utterance agree on it and on
everything before it. Trusted text becomes a final at a sentence end the decoder marked,
or, in a long utterance, as a whole agreed prefix; silence stays a trigger of its own (in
streaming.py). Pure functions over absolute-timed words, so they are tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from ..core.config import SAMPLE_RATE

SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class TimedWord:
    """A word with absolute sample times (the decoder's are relative to its window)."""

    word: str
    start: int
    end: int
    probability: float = 1.0

    @property
    def key(self) -> str:
        return norm(self.word)


def norm(word: str) -> str:
    return "".join(ch for ch in word.lower() if ch.isalnum() or ch == "'")


def agreed_prefix(prev: list[TimedWord], cur: list[TimedWord]) -> int:
    """How many leading words of `cur` the previous hypothesis also had, in order."""
    n = 0
    for a, b in zip(prev, cur):
        if a.key != b.key or not a.key:
            break
        n += 1
    return n


def commit_point(cur: list[TimedWord], agreed: int, now: int, *, settle: int, long_utterance: bool) -> int:
    """How many leading words of `cur` to commit as a final now (0: none).

    A sentence end counts once agreed and either followed by another word (the speaker went
    on) or `settle` samples old (nothing new was said after it, whatever the background).
    In a long utterance without one, the agreed words but the last are committed: the last
    agreed word may still grow ("sun" -> "sunrise") when more audio comes.
    """
    for i in range(agreed - 1, -1, -1):
        w = cur[i]
        if w.word.rstrip().endswith(SENTENCE_END) and (i + 1 < len(cur) or now - w.end >= settle):
            return i + 1
    if long_utterance and agreed >= 3:
        return agreed - 1
    return 0


def inside(words: list[TimedWord], lo: int, hi: int | None = None, slack: int = 0) -> list[TimedWord]:
    """The words of [lo, hi) from a decode that covered more (left context is decoded, then cut).

    A word belongs if it ends more than `slack` after `lo` and starts more than `slack`
    before `hi`. Not its middle: the alignment stretches the first word after a pause back
    to the start of the pause, and the last word before one into it.
    """
    return [w for w in words if w.end > lo + slack and (hi is None or w.start < hi - slack)]


def nearest(spans: list[tuple[int, int]], sample: int) -> int:
    """Index of the span (start, end) that holds `sample`, else of the one nearest to it."""

    def distance(span: tuple[int, int]) -> int:
        start, end = span
        return 0 if start <= sample <= end else min(abs(sample - start), abs(sample - end))

    return min(range(len(spans)), key=lambda i: distance(spans[i]))


def join(words: list[TimedWord]) -> str:
    return " ".join(w.word.strip() for w in words).strip()


def same_text(a: str, b: str) -> bool:
    return [norm(x) for x in a.split() if norm(x)] == [norm(x) for x in b.split() if norm(x)]


def timed(words: Iterable[Any], lo: int) -> list[TimedWord]:
    """Decoder words (seconds from the window start `lo`) on the stream's sample clock: the one conversion."""
    return [
        TimedWord(w.word.strip(), lo + int(w.start * SAMPLE_RATE), lo + int(w.end * SAMPLE_RATE), w.probability)
        for w in words
    ]
