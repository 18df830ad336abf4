"""Self-correcting captions: re-decode recent finals once later audio exists.

A final is emitted as soon as its utterance ends, from the audio up to that point. A few
seconds later the same words can be decoded with audio on both sides (left and right
context), which is what batch decoding gets for free. Where that changes the text, one
`asr.revision` event replaces the final's text (same segment id and times). Each final is
revised at most once, at the earliest `REVISE_RIGHT_S` of audio after its end and
`QUIET_S` after the newest final, so a revision comes at most that plus one decode (and any
backlog, and the next utterance's final) after the final's speech
ends, or never; finals still waiting when the stream ends stay as they are (a stop must not
wait for extra decodes).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..core.config import SAMPLE_RATE
from .agreement import inside, join, norm, same_text, timed

REVISE_RIGHT_S = 3.0  # later audio a revision waits for
REVISE_LEFT_S = 6.0  # earlier audio it decodes with
MIN_GAIN = 0.05  # mean word probability a revision must add over the final
QUIET_S = 1.0  # audio that must follow the latest final before a revision decode
MAX_PENDING = 8  # a backlog beyond this is dropped, oldest first: revisions are optional


@dataclass
class Pending:
    seg: int
    start: int
    end: int
    text: str
    confidence: float


class Revisions:
    def __init__(self, rec, *, enabled: bool) -> None:
        self.rec = rec
        self.enabled = enabled
        self.queue: deque[Pending] = deque()
        self.last_final = 0  # stream position (samples) when the last final was emitted

    def add(self, utt, text: str, words) -> None:
        self.last_final = self.rec.total
        if not self.enabled:
            return
        self.queue.append(Pending(utt.seg, utt.start, utt.end, text, confidence(words)))
        while len(self.queue) > MAX_PENDING:
            self.queue.popleft()

    def needs_from(self) -> int:
        """The oldest sample a pending revision will decode."""
        if not self.queue:
            return self.rec.total
        return self.queue[0].start - int(REVISE_LEFT_S * SAMPLE_RATE)

    def run_one(self, now: int) -> bool:
        if not self.queue or now - self.queue[0].end < REVISE_RIGHT_S * SAMPLE_RATE:
            return False
        if now - self.last_final < QUIET_S * SAMPLE_RATE:
            # a client that stops right after a final must not find us in an extra decode:
            # the stop ladder's grace would run out and the worker be killed
            return False
        self._revise(self.queue.popleft())
        return True

    def _revise(self, p: Pending) -> None:
        rec = self.rec
        lo, prompt = rec.context_at(p.start, int(REVISE_LEFT_S * SAMPLE_RATE))
        hi = min(rec.total, p.end + int(REVISE_RIGHT_S * SAMPLE_RATE))
        if hi <= p.start:
            return

        hyp = rec._decode_span(lo, hi, prompt, words=True)
        words = inside(timed(hyp.words, lo), p.start, p.end, slack=int(0.1 * SAMPLE_RATE))
        new = join(words)
        old_n, new_n = len(p.text.split()), len(new.split())
        # a revision only improves: an empty or wildly different decode is a glitch, not a fix
        if not new or same_text(new, p.text) or not (0.5 <= new_n / max(1, old_n) <= 2.0):
            return
        # tiny models change words at random between decodes: only a decode the model itself
        # is surer of replaces what the user already read
        if confidence(words) < p.confidence + MIN_GAIN:
            return
        if not any(norm(w) for w in new.split()):
            return
        rec.emit(
            "asr.revision",
            segment_id=p.seg,
            text=new,
            t0=round(p.start / SAMPLE_RATE, 3),
            t1=round(p.end / SAMPLE_RATE, 3),
            data={"old_text": p.text, "delay_s": round((rec.total - p.end) / SAMPLE_RATE, 3)},
        )


def confidence(words) -> float:
    """Mean word probability (0 for no words)."""
    return sum(w.probability for w in words) / len(words) if words else 0.0
