"""Self-correcting captions: re-decode recent finals in blocks once later audio exists.

A final is emitted as soon as its utterance ends, from the decode of that utterance alone.
Later the same words can be decoded with audio on both sides, which is what batch decoding
gets for free. Finals are revised in blocks: once the oldest unrevised final has
`REVISE_RIGHT_S` of audio after it and `GATHER_S` more has passed, one decode covers up to
`left_context` of audio before it (whole earlier finals), every final that by then has
`REVISE_RIGHT_S` after it, and that right context. One long decode costs far less than one
per final (the encoder and the left context are shared), and a long window is where Whisper
does best. Where a final's words change and the decoder is at least as sure of them, one
`asr.revision` event replaces its text (same segment id and times). A block that only repeats
a final it is unsure of (mean word probability under `DOUBT`) asks for a second opinion: one
more decode, in another window, up to that final's right context; per final, the more
confident decode wins.

The bound: a final is revised, or left as it is, at most `REVISE_RIGHT_S + GATHER_S` of
audio after its speech ends, plus two decodes at most (and any backlog; a revision also waits
`QUIET_S` after the newest final). When a stream ends by itself (a file), the finals still
waiting are revised at once with the audio there is after them (the closing pass, a block at a
time, ended by a stop); after a stop they stay as they are: a stop must not wait for extra decodes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..core.config import SAMPLE_RATE
from .agreement import TimedWord, inside, join, nearest, norm, same_text, timed
from .decoder import FULL_WINDOW_S, window_for

REVISE_RIGHT_S = 3.0  # later audio a final's revision decodes with
GATHER_S = 10.0  # audio a block waits for past that, so that one decode covers several finals
MAX_BLOCK_S = 20.0  # a block's whole window (left context, finals, right context): shorter did worse, longer costs more
MIN_GAIN = 0.0  # mean word probability a revision must add over the final
QUIET_S = 1.0  # audio that must follow the latest final before a revision decode
DOUBT = 0.8  # mean word probability under which a block that agrees with a final asks again
MAX_PENDING = 16  # a backlog beyond this is dropped, oldest first: revisions are optional
REVISE_BEAM = 5  # blocks are few (one per ~10 s of speech): a wider search is affordable there, and it
# fixes what greedy decoding gets wrong in any window ("But whether it's" for "The weather is")
SLACK = int(0.1 * SAMPLE_RATE)


@dataclass
class Pending:
    seg: int
    start: int
    end: int
    text: str
    confidence: float


class Revisions:
    def __init__(self, rec, *, enabled: bool, left: float) -> None:
        self.rec = rec
        self.enabled = enabled
        self.left = int(left * SAMPLE_RATE)
        self.queue: deque[Pending] = deque()
        self.last_final = 0  # stream position (samples) when the last final was emitted
        self.second_opinions = 0

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
        return self.queue[0].start - self.left

    def due(self, now: int) -> bool:
        if not self.queue or now - self.queue[0].end < (REVISE_RIGHT_S + GATHER_S) * SAMPLE_RATE:
            return False
        # a client that stops right after a final must not find us in an extra decode: the
        # stop ladder's grace would run out and the worker be killed
        return now - self.last_final >= QUIET_S * SAMPLE_RATE

    def run_one(self, now: int, closing: bool = False) -> bool:
        """One block, when one is due; `closing`: the stream has ended, and the finals still
        waiting are revised with what audio there is after them."""
        if not (self.queue if closing else self.due(now)):
            return False
        right = int(REVISE_RIGHT_S * SAMPLE_RATE)
        first = self.queue[0]
        lo, prompt = self.rec.context_at(first.start, self.left)
        block: list[Pending] = []
        for p in self.queue:
            if (now - p.end < right and not closing) or min(now, p.end + right) - lo > MAX_BLOCK_S * SAMPLE_RATE:
                break
            block.append(p)
        if not block:  # one final longer than a block: revised alone, without left context
            lo, prompt = self.rec.context_at(first.start, 0)
            block = [first]
        for _ in block:
            self.queue.popleft()
        hi = min(now, block[-1].end + right)
        hyp = self.rec._decode_span(lo, hi, prompt, words=True, beam=REVISE_BEAM)
        groups = assign(timed(hyp.words, lo), block)
        doubts = [i for i, (p, words) in enumerate(zip(block, groups)) if doubtful(p, words)]
        if doubts:
            # The block repeats a final it is unsure of. tiny models sit on a knife edge there:
            # the same audio 10 ms later, or in another encoder window, flips "But whether it's"
            # to "The weather is". A second decode, ending `right` after the last such final
            # (a shorter window, so cheaper), is a second opinion; the more confident one wins.
            upto = doubts[-1] + 1
            hi2 = min(hi, block[upto - 1].end + right)
            other = self.rec._decode_span(lo, hi2, prompt, words=True, beam=REVISE_BEAM,
                                          window=other_window(hi - lo) if hi2 == hi else None)
            seconds = assign(timed(other.words, lo), block[:upto])
            for i in doubts:
                groups[i] = max(groups[i], seconds[i], key=confidence)
            self.second_opinions += 1
        for p, words in zip(block, groups):
            self._revise(p, words, now)
        return True

    def _revise(self, p: Pending, words: list[TimedWord], now: int) -> None:
        new = join(words)
        old_n, new_n = len(p.text.split()), len(new.split())
        # a revision only improves: an empty or wildly different decode is a glitch, not a fix
        # (a short final may grow by a few words: speech the detector cut off around it)
        if not new or same_text(new, p.text) or not (old_n / 2 - 1 <= new_n <= 2 * old_n + 3):
            return
        # tiny models change words at random between decodes: only a decode the model itself
        # is at least as sure of replaces what the user already read
        if confidence(words) < p.confidence + MIN_GAIN:
            return
        if not any(norm(w) for w in new.split()):
            return
        self.rec.emit(
            "asr.revision",
            segment_id=p.seg,
            text=new,
            t0=round(p.start / SAMPLE_RATE, 3),
            t1=round(p.end / SAMPLE_RATE, 3),
            data={"old_text": p.text, "delay_s": round((now - p.end) / SAMPLE_RATE, 3)},
        )


def assign(words: list[TimedWord], block: list[Pending]) -> list[list[TimedWord]]:
    """Each final's words from a decode of the whole block: those inside its span, and those
    between two finals to the nearer one (in noise the detector splits an utterance where a
    quiet word was, and that word belongs to a neighbour, not to nobody)."""
    out: list[list[TimedWord]] = [[] for _ in block]
    for w in inside(words, block[0].start, block[-1].end, slack=SLACK):
        out[nearest([(p.start, p.end) for p in block], (w.start + w.end) // 2)].append(w)
    return out


def doubtful(p: Pending, words: list[TimedWord]) -> bool:
    """The block heard the final's own words, and is not sure of them."""
    return bool(words) and same_text(join(words), p.text) and confidence(words) < DOUBT


def other_window(samples: int) -> int:
    """An encoder window other than the one `decode` picks for this much audio."""
    usual = window_for(samples / SAMPLE_RATE)
    return FULL_WINDOW_S if usual <= FULL_WINDOW_S - 2 else FULL_WINDOW_S - 4


def confidence(words) -> float:
    """Mean word probability (0 for no words)."""
    return sum(w.probability for w in words) / len(words) if words else 0.0
