"""Streaming recogniser: utterances from the VAD, partials while they go on, finals at their end.

Two schedules share one decoder:
- live (real-time file, push, microphone): a partial every `partial_interval` of new audio
  while the input is not backlogged; a final when two consecutive partials agree on words up
  to a sentence end (agreement.py), when `vad_silence` of silence ends the utterance, or
  when it reaches `max_segment`. A final is the utterance decoded alone, with the text
  before it as the prompt; at a silence the last partial is that decode already when it
  covered the utterance's end, so the final costs nothing and comes at once. A final the
  decoder is unsure of is decoded once more with up to `final_context` of the audio before
  it, while the stream has cost less than `cpu_budget` cores so far. Later, with
  `left_context` of audio before and a few seconds after, revisions.py re-decodes recent
  finals in blocks and may replace a final's text (`asr.revision`).
- batch (file as fast as possible): finished utterances are gathered up to `batch_window`
  and decoded together, which costs about what one batch transcribe does; partials are
  replayed from the word timings at no extra decode.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..core.config import SAMPLE_RATE, AsrConfig
from .agreement import SENTENCE_END, TimedWord, agreed_prefix, commit_point, inside, join, nearest, timed
from .decoder import Hypothesis, Word
from .revisions import Revisions, confidence
from .vad import EnergyVad

PAD = int(1.0 * SAMPLE_RATE)  # audio around an utterance: edges are not cut, and Whisper gets a lead-in
FORCED_TAIL = 1.0  # seconds left undecided at a forced split (a word may be cut there)
END_SLACK = 0.1  # seconds a word may end after the detector's last voiced frame
CUT_SLACK = int(0.1 * SAMPLE_RATE)  # a word whose middle is this close before the utterance is its own
REUSE_SLACK = int(0.05 * SAMPLE_RATE)  # audio past the last voiced frame a reused partial must cover
SETTLE_S = 0.6  # an agreed sentence end with nothing said after it for this long is final
FINAL_DOUBT = 0.55  # a final whose mean word probability is under this is decoded again with `final_context`
AGREE_LONG_S = 3.0  # past this, agreed words are committed even without a sentence end

Emit = Callable[..., None]


@dataclass
class Utterance:
    start: int
    end: int
    seg: int


class StreamingRecognizer:
    def __init__(self, decoder, cfg: AsrConfig, emit: Emit, *, live: bool) -> None:
        self.decoder = decoder
        self.cfg = cfg
        self.emit = emit
        self.live = live
        self.vad = EnergyVad(cfg.vad_threshold_db)
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # sample index of buf[0]
        self.total = 0
        self.utt_start: int | None = None
        self.last_voice = 0
        self.last_partial_at = 0
        self.partial_text = ""
        self.segment_no = 0
        self.context = ""
        self.pending: list[Utterance] = []  # batch schedule: finished, not yet decoded
        self.arrivals: deque[tuple[int, float]] = deque(maxlen=512)  # (end sample, monotonic)
        self.decode_cpu = 0.0
        self.decodes = 0
        self.closing_cpu = 0.0  # CPU seconds of the closing revisions (finalize)
        self.context_decodes = 0  # finals decoded again with left context (`final_context`)
        self.context_skipped = 0  # ... and those not: the stream was over `cpu_budget`
        self.context_cpu = 0.0  # CPU seconds of those decodes (part of decode_cpu)
        self.prev_words: list[TimedWord] = []  # the last partial's words, for agreement
        self.prev_upto = 0  # audio the last partial's decode covered
        self.revisions = Revisions(self, enabled=live and cfg.revise, left=cfg.left_context)
        # recent finals as (start, end, len(context) before it): left context starts at one
        self.spans: deque[tuple[int, int, int]] = deque(maxlen=64)

    # -- input ---------------------------------------------------------------------------
    def push(self, chunk: np.ndarray) -> None:
        start = self.total
        self.buf = np.concatenate([self.buf, chunk]) if len(self.buf) else chunk.copy()
        self.total += len(chunk)
        self.arrivals.append((self.total, time.monotonic()))
        for end, speech in self.vad.frames(chunk, start):
            if speech:
                if self.utt_start is None:
                    self.utt_start = max(0, end - 3 * 480)
                    self.last_partial_at = end
                    self.segment_no += 1
                self.last_voice = end
            elif self.utt_start is not None and end - self.last_voice >= self.cfg.vad_silence * SAMPLE_RATE:
                self._utterance_done(Utterance(self.utt_start, self.last_voice, self.segment_no))
            limit = self.cfg.max_segment if self.live else self.cfg.batch_window
            if self.pending and end - self.pending[0].start + 2 * PAD >= self.cfg.batch_window * SAMPLE_RATE:
                # Whisper does best with long windows: decode finished utterances together,
                # as late as the window allows
                self._flush_batch()
            if self.utt_start is not None and end - self.utt_start >= limit * SAMPLE_RATE:
                self._forced_split(end)
        self._trim()

    def tick(self, backlogged: bool) -> bool:
        """Live schedule: a partial when enough new audio arrived and we are caught up; with
        time to spare, a revision of an older final. True if it did one (there may be more);
        False means nothing is due until more audio arrives (the schedule counts samples)."""
        if not self.live or backlogged:
            return False
        if self.utt_start is not None and self.total - self.last_partial_at >= self.cfg.partial_interval * SAMPLE_RATE:
            self._partial()
            return True
        return self.revisions.run_one(self.total)

    def finalize(self, decode: bool = True, revise: Callable[[], bool] | None = None) -> None:
        """Commit everything heard so far. decode=False reuses the last partial (fast exit).
        `revise`: the finals still waiting for a revision get it now, with the audio there is,
        a block at a time while `revise()` is true (a stop asked for meanwhile ends it)."""
        if self.utt_start is not None:
            utt = Utterance(self.utt_start, max(self.last_voice, self.utt_start + 1), self.segment_no)
            if decode:
                self._utterance_done(utt)
            else:
                self.utt_start = None
                if self.partial_text:
                    self._emit_final(utt, self.partial_text, [], reason="fast-exit")
                self.partial_text = ""
        if self.pending:
            if decode:
                self._flush_batch()
            else:
                self.pending.clear()
        # otherwise finals still waiting for a revision stay as they are: a stop must not wait
        # for more decodes than the final one (the stop ladder's grace is a few seconds)
        t = time.process_time()
        while decode and revise is not None and revise() and self.revisions.run_one(self.total, closing=True):
            pass
        self.closing_cpu = time.process_time() - t

    # -- live schedule ---------------------------------------------------------------------
    def _partial(self) -> None:
        start = self.utt_start
        assert start is not None
        # the cadence is kept on the audio clock: audio comes in chunks (0.1 s from a file), and
        # counting from the chunk that made a partial due would stretch every interval to the
        # next chunk; after a backlog it restarts from now
        step = int(self.cfg.partial_interval * SAMPLE_RATE)
        due = self.last_partial_at + step
        self.last_partial_at = due if self.total - due < step else self.total
        # without acoustic left context: it would cost a longer window every partial, and the
        # revision decodes these words again with it
        # a partial that looks like a loop is not decoded again (that doubles its cost in
        # noise); it neither agrees with the next one nor becomes a final at a silence
        words, shaky = self._live_words(start, self.total, retry=False)
        agreed = 0 if shaky else agreed_prefix(self.prev_words, words)
        self.prev_words, self.prev_upto = ([], 0) if shaky else (words, self.total)
        long_utt = self.total - start >= AGREE_LONG_S * SAMPLE_RATE
        n = commit_point(words, agreed, self.total, settle=int(SETTLE_S * SAMPLE_RATE), long_utterance=long_utt)
        if n:
            # a final without silence: the speaker went on (or the background never pauses)
            done = words[:n]
            split = words[n].start if n < len(words) else done[-1].end
            split = max(split, done[-1].end)
            reason = "sentence-end" if done[-1].word.rstrip().endswith(SENTENCE_END) else "agreement"
            self._final_words(Utterance(start, split, self.segment_no), done, reason=reason)
            self.segment_no += 1
            self.utt_start = split
            words = words[n:]
            self.prev_words = words
        text = join(words)
        if text:
            self.partial_text = text
            self.emit(
                "asr.partial",
                segment_id=self.segment_no,
                text=text,
                t0=_sec(self.utt_start),
                t1=_sec(self.total),
            )

    def context_at(self, start: int, left: int) -> tuple[int, str]:
        """Where a decode of audio from `start` begins, and its text prompt.

        The left context is whole earlier finals that started at most `left` before (a cut
        inside a word makes Whisper stumble), and the prompt is only the text *before* that
        audio: a prompt that repeats the audio makes Whisper copy it or skip the audio.
        """
        # without left context the prompt still stops before this audio: a revision's own
        # final (and any later one) is already in self.context
        ctx_len = next((before for s, _, before in self.spans if s >= start), len(self.context))
        lo = start - PAD
        for s, e, before in self.spans:
            if s >= start - left and e <= start and s >= self.buf_start:
                lo, ctx_len = min(s - int(0.1 * SAMPLE_RATE), start - PAD), before
                break
        return self._clamp(lo), self.context[:ctx_len][-self.cfg.context_chars :]

    def _live_words(self, start: int, end: int, *, pad: int = PAD, retry: bool = True) -> tuple[list[TimedWord], bool]:
        """Decode [start, end) alone (a lead-in of PAD before it); its own words, and whether
        the decode looked suspicious (only without `retry`)."""
        lo, prompt = self.context_at(start, 0)
        hyp = self._decode_span(lo, min(self.total, end + pad), prompt, words=True, retry=retry)
        if not hyp.words:
            return ([TimedWord(hyp.text, start, max(start, end))] if hyp.text else []), hyp.suspicious
        return inside(timed(hyp.words, lo), start, slack=CUT_SLACK), hyp.suspicious

    def _utterance_done(self, utt: Utterance) -> None:
        self.utt_start = None
        if self.live:
            words = self._last_partial_words(utt)
            if words is None:
                words, _ = self._live_words(utt.start, utt.end)
            self._final_words(utt, words, reason="silence")
            self.partial_text = ""
            self.prev_words = []
            return
        self.pending.append(utt)

    def _last_partial_words(self, utt: Utterance) -> list[TimedWord] | None:
        """The last partial's words when its decode already covered the utterance to its end
        (and a little past it: a last word may trail the detector's last voiced frame)."""
        if not self.prev_words or self.prev_upto < utt.end + REUSE_SLACK:
            return None
        return [w for w in self.prev_words if w.start < utt.end + REUSE_SLACK]

    def _final_words(self, utt: Utterance, words: list[TimedWord], *, reason: str) -> None:
        if self.cfg.final_context and words and confidence(words) < FINAL_DOUBT:
            if self.cores() < self.cfg.cpu_budget:
                words = self._with_left_context(utt, words)
            else:
                self.context_skipped += 1
        text = join(words)
        plain = [Word(w.word, (w.start - utt.start) / SAMPLE_RATE, (w.end - utt.start) / SAMPLE_RATE, w.probability) for w in words]
        if self._emit_final(utt, text, plain, offset=_sec(utt.start), reason=reason):
            self.revisions.add(utt, text, words)
        self.partial_text = ""

    def _with_left_context(self, utt: Utterance, words: list[TimedWord]) -> list[TimedWord]:
        """A final the decoder is unsure of, decoded again with up to `final_context` of the
        audio before it (whole earlier finals) and the utterance's own words kept; the more
        confident of the two decodes stands. One decode more, only where it may pay (under
        reverb and music most finals qualify, on the clean Harvard set 8 in 20)."""
        lo, prompt = self.context_at(utt.start, int(self.cfg.final_context * SAMPLE_RATE))
        if lo >= utt.start - PAD:  # no earlier final in reach: nothing to add
            return words
        # not retried in a full 30 s window when it looks like a loop: the final it would only
        # improve is already there, and that retry is the costliest decode there is
        before = self.decode_cpu
        hyp = self._decode_span(lo, min(self.total, utt.end + PAD), prompt, words=True, retry=False)
        self.context_cpu += self.decode_cpu - before
        again = [] if hyp.suspicious else inside(timed(hyp.words, lo), utt.start, utt.end, slack=CUT_SLACK)
        self.context_decodes += 1
        return again if again and confidence(again) > confidence(words) else words

    def cores(self) -> float:
        """Decode CPU seconds per second of audio so far: what this stream costs."""
        return self.decode_cpu * SAMPLE_RATE / max(self.total, SAMPLE_RATE)

    def _forced_split(self, now: int) -> None:
        """An utterance too long to decode in one window: commit all but its last second."""
        if not self.live and self.pending:
            self._flush_batch()
        start = self.utt_start
        assert start is not None
        if self.live:
            cut = now - int(FORCED_TAIL * SAMPLE_RATE)
            words, _ = self._live_words(start, now, pad=0)
            keep = [w for w in words if w.end <= cut] or words
            split = keep[-1].end if keep and keep is not words else now
            self._final_words(Utterance(start, split, self.segment_no), keep, reason="max-length")
            self.prev_words = []
        else:
            lo = self._lo(start)
            hyp = self._decode(start, now, words=True)
            cut = now - int(FORCED_TAIL * SAMPLE_RATE)
            keep_w = [w for w in hyp.words if lo + int(w.end * SAMPLE_RATE) <= cut]
            if hyp.words and keep_w:
                text = "".join(w.word for w in keep_w).strip()
                split = lo + int(keep_w[-1].end * SAMPLE_RATE)
            else:
                text, keep_w, split = hyp.text, hyp.words, now
            self._emit_final(Utterance(start, split, self.segment_no), text, keep_w, offset=_sec(lo), hyp=hyp, reason="max-length")
        self.partial_text = ""
        self.segment_no += 1
        self.utt_start = split
        self.last_partial_at = split

    # -- batch schedule --------------------------------------------------------------------
    def _flush_batch(self) -> None:
        utts, self.pending = self.pending, []
        lo = self._lo(utts[0].start)
        hyp = self._decode(utts[0].start, utts[-1].end, words=True)
        if not hyp.words:
            if hyp.text:
                self._emit_final(Utterance(utts[0].start, utts[-1].end, utts[0].seg), hyp.text, [], hyp=hyp)
            return
        groups: list[list[Word]] = [[] for _ in utts]
        for w in hyp.words:
            mid = lo + int((w.start + w.end) / 2 * SAMPLE_RATE)
            groups[nearest([(u.start, u.end) for u in utts], mid)].append(w)
        for utt, words in zip(utts, groups):
            if not words:
                continue
            step = self.cfg.partial_interval
            t = _sec(utt.start) + step
            while t < _sec(utt.end):
                heard = [w for w in words if _sec(lo) + w.end <= t]
                if heard:
                    self.emit(
                        "asr.partial",
                        segment_id=utt.seg,
                        text="".join(w.word for w in heard).strip(),
                        t0=_sec(utt.start),
                        t1=round(t, 3),
                    )
                t += step
            self._emit_final(utt, "".join(w.word for w in words).strip(), words, offset=_sec(lo), hyp=hyp)

    # -- helpers ---------------------------------------------------------------------------
    def _lo(self, start: int) -> int:
        return self._clamp(start - PAD)

    def _clamp(self, lo: int) -> int:
        """Where a decode can begin: not before the audio still kept, but at the stream's start
        a lead-in of silence is made up (lo < 0): Whisper hears the first word of a stream
        wrong when it comes within a few tenths of a second of the window's start."""
        return lo if self.buf_start == 0 else max(self.buf_start, lo)

    def _decode(self, start: int, end: int, *, words: bool) -> Hypothesis:
        return self._decode_span(self._lo(start), min(self.total, end + PAD), self.context[-self.cfg.context_chars :], words=words)

    def _decode_span(self, lo: int, hi: int, prompt: str, *, words: bool, beam: int | None = None, retry: bool = True,
                     window: int | None = None) -> Hypothesis:
        audio = self.buf[max(0, lo - self.buf_start) : hi - self.buf_start]
        if lo < self.buf_start:
            audio = np.concatenate([np.zeros(self.buf_start - lo, dtype=np.float32), audio])
        t = time.process_time()
        hyp = self.decoder.decode(audio, prompt, words=words, beam=beam, retry=retry, window=window)
        self.decode_cpu += time.process_time() - t
        self.decodes += 1
        return hyp

    def _emit_final(
        self,
        utt: Utterance,
        text: str,
        words: list[Word],
        *,
        offset: float = 0.0,
        hyp: Hypothesis | None = None,
        reason: str = "silence",
    ) -> bool:
        text = text.strip()
        if not text:
            return False
        if len(self.context) > 2000:
            cut = len(self.context) - 1000  # keep it bounded; span offsets move with it
            self.context = self.context[cut:]
            self.spans = deque(((s, e, max(0, b - cut)) for s, e, b in self.spans), maxlen=self.spans.maxlen)
        self.spans.append((utt.start, utt.end, len(self.context)))
        self.context = (self.context + " " + text).strip()
        word_dicts = [w.as_dict(offset) for w in words]
        # raw alignment puts the first word's start at the start of the decoded audio (the
        # lead-in), and its last word's end into the trailing pad: the detector bounds both
        speech_t0, speech_t1 = _sec(utt.start), _sec(utt.end) + END_SLACK
        for w in word_dicts:
            w["t1"] = max(min(w["t1"], speech_t1), speech_t0)
            w["t0"] = min(max(w["t0"], speech_t0), w["t1"])
        t0 = word_dicts[0]["t0"] if word_dicts else speech_t0
        t1 = word_dicts[-1]["t1"] if word_dicts else _sec(utt.end)
        data: dict = {"reason": reason}
        if hyp is not None:
            data["window_s"] = hyp.window_s
            data["retried"] = hyp.retried
        if self.live:
            arrived = self._arrival_of(int(min(t1, _sec(utt.end)) * SAMPLE_RATE))
            if arrived is not None:
                data["latency"] = round(time.monotonic() - arrived, 3)
            data["audio_lag"] = round(_sec(self.total) - min(t1, _sec(utt.end)), 3)
        self.emit(
            "asr.final",
            segment_id=utt.seg,
            text=text,
            t0=round(t0, 3),
            t1=round(max(t1, t0), 3),
            words=word_dicts,
            data=data,
        )
        return True

    def _arrival_of(self, sample: int) -> float | None:
        for end, mono in self.arrivals:
            if end >= sample:
                return mono
        return None

    def _trim(self) -> None:
        """Keep only audio that a future decode can still need."""
        keep_from = self.total - PAD
        if self.utt_start is not None:
            keep_from = min(keep_from, self.utt_start - PAD)
        if self.cfg.final_context:  # the audio before the utterance its final may be decoded with
            keep_from = min(keep_from, (self.total if self.utt_start is None else self.utt_start) - int(self.cfg.final_context * SAMPLE_RATE))
        if self.pending:
            keep_from = min(keep_from, self.pending[0].start - PAD)
        keep_from = min(keep_from, self.revisions.needs_from())
        drop = keep_from - self.buf_start
        if drop > SAMPLE_RATE:
            self.buf = self.buf[drop:]
            self.buf_start += drop


def _sec(samples: int) -> float:
    return round(samples / SAMPLE_RATE, 3)
