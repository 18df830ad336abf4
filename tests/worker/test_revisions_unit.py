"""Agreement, word cutting and caption revisions: the pure parts, without a model."""

import dataclasses

import webvtt

from loquilex_nb.core.events import REVISION_WINDOW_S, Event, revised
from loquilex_nb.worker import revisions
from loquilex_nb.worker.agreement import TimedWord, agreed_prefix, commit_point, inside, join, same_text
from loquilex_nb.worker.captions import CaptionWriter

SR = 16000


def words(spec):
    """'the:0-0.2 cat.:0.3-0.6' -> TimedWords (seconds -> samples)."""
    out = []
    for item in spec.split():
        w, times = item.rsplit(":", 1)
        a, b = times.split("-")
        out.append(TimedWord(w, int(float(a) * SR), int(float(b) * SR)))
    return out


def test_agreed_prefix_ignores_case_and_punctuation_and_stops_at_first_difference():
    prev = words("The:0-0.2 boy:0.2-0.4 was:0.4-0.6 thair:0.6-0.9")
    cur = words("the:0-0.2 boy,:0.2-0.4 was:0.4-0.6 there.:0.6-0.9 A:1.2-1.3")
    assert agreed_prefix(prev, cur) == 3
    assert agreed_prefix([], cur) == 0


def test_sentence_end_commits_only_when_agreed_and_followed_or_settled():
    cur = words("the:0-0.2 sun:0.2-0.5 rose.:0.5-0.9 a:1.4-1.5 rod:1.5-1.8")
    # agreed through "rose." and the speaker went on: commit the sentence, keep the rest
    assert commit_point(cur, 3, 2 * SR, settle=SR // 2, long_utterance=False) == 3
    # the period is not agreed yet: nothing
    assert commit_point(cur, 2, 2 * SR, settle=SR // 2, long_utterance=False) == 0
    alone = words("the:0-0.2 sun:0.2-0.5 rose.:0.5-0.9")
    # a trailing period Whisper adds at the edge of the audio is not a sentence end yet ...
    assert commit_point(alone, 3, int(1.0 * SR), settle=SR // 2, long_utterance=False) == 0
    # ... unless nothing more was said for `settle`, whatever the background did
    assert commit_point(alone, 3, int(1.5 * SR), settle=SR // 2, long_utterance=False) == 3


def test_long_utterance_commits_agreed_words_but_the_last():
    cur = words("and:0-0.2 then:0.2-0.4 we:0.4-0.6 went:0.6-0.8 on:0.8-1")
    assert commit_point(cur, 4, 2 * SR, settle=SR, long_utterance=True) == 3
    assert commit_point(cur, 4, 2 * SR, settle=SR, long_utterance=False) == 0
    assert commit_point(cur, 2, 2 * SR, settle=SR, long_utterance=True) == 0


def test_inside_cuts_left_context_by_word_times_despite_stretched_edges():
    # previous utterance (ends 2.0), a pause, the utterance at 2.5..4.0 whose first word the
    # aligner stretched back into the pause, and a next word stretched forward
    ws = words("old:1.5-2.0 words.:1.6-2.0 new:2.0-2.8 text:2.8-3.5 here.:3.5-4.6 next:4.6-5")
    got = inside(ws, int(2.5 * SR), int(4.0 * SR), slack=int(0.1 * SR))
    assert join(got) == "new text here."
    assert join(inside(ws, int(2.5 * SR), slack=int(0.1 * SR))) == "new text here. next"


def test_same_text_ignores_case_and_punctuation():
    assert same_text("Hello, world.", "hello world")
    assert not same_text("hello world", "hello word")


def ev(type_, seq, seg, text):
    return Event(type_, "s", seq, 0.0, 0.0, segment_id=seg, text=text, t0=float(seg), t1=seg + 0.5)


def test_revised_keeps_order_and_every_segment():
    finals = [ev("asr.final", 1, 1, "a"), ev("asr.final", 2, 2, "b"), ev("asr.final", 4, 3, "c")]
    revs = [ev("asr.revision", 3, 1, "A"), ev("asr.revision", 5, 3, "C"), ev("asr.revision", 6, 3, "C2")]
    out = revised(finals, revs)
    assert [e.segment_id for e in out] == [1, 2, 3]
    assert [e.text for e in out] == ["A", "b", "C2"]
    assert out[1] is finals[1] and dataclasses.replace(out[0], text="a") == finals[0]


def test_caption_files_take_revisions_in_place(tmp_path):
    w = CaptionWriter(tmp_path, final_lines=2)
    w.final("one", 0.0, 1.0, segment_id=1)
    w.final("two", 1.0, 2.0, segment_id=2)
    w.final("three", 2.0, 3.0, segment_id=3)
    assert w.revise(2, "TWO fixed")
    assert not w.revise(9, "unknown segment")
    assert not w.revise(1, "   ")  # an empty revision never blanks a caption
    cues = list(webvtt.read(str(tmp_path / "captions.vtt")))
    assert [c.text for c in cues] == ["one", "TWO fixed", "three"]
    assert [(c.start_in_seconds, c.end_in_seconds) for c in cues] == [(0, 1), (1, 2), (2, 3)]
    assert (tmp_path / "final.txt").read_text().splitlines() == ["TWO fixed", "three"]
    assert "TWO fixed" in (tmp_path / "captions.srt").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_decode_prompt_never_holds_the_text_of_its_own_audio_or_later():
    """The prompt is the text before the decoded audio; with no earlier final near enough to
    be left context (the first utterance, or one after a long pause) it must still stop
    there: a revision's own final is already in the context, and a prompt repeating the audio
    made Whisper skip it ("Please open" for a whole sentence and the next one)."""
    from loquilex_nb.core.config import AsrConfig
    from loquilex_nb.worker.streaming import StreamingRecognizer, Utterance

    rec = StreamingRecognizer(None, AsrConfig(), lambda *a, **k: None, live=True)
    for seg, (a, b, text) in enumerate([(1, 3, "one."), (10, 12, "two."), (13, 15, "three.")], 1):
        assert rec._emit_final(Utterance(a * SR, b * SR, seg), text, [])
    left = 6 * SR
    # the first final: nothing was said before it
    assert rec.context_at(1 * SR, left) == (0, "")
    # no final within `left` before it: no audio context, and only the text before it
    assert rec.context_at(10 * SR, left) == (9 * SR, "one.")
    # the final before it is its left context: the prompt is the text before that one
    assert rec.context_at(13 * SR, left) == (int(9.9 * SR), "one.")
    # a new utterance after all of them: everything said is its prompt
    assert rec.context_at(20 * SR, 0) == (19 * SR, "one. two. three.")


class Transcript:
    """A stand-in for the recogniser around Revisions: a decode of [lo, hi) returns the words
    of a fixed transcript that lie in it, with the given probability (the decoder is not what
    these tests are about: which finals a block holds, when, and which words each gets)."""

    def __init__(self, spec, p=0.9):
        self.words = [dataclasses.replace(w, probability=p) for w in words(spec)]
        self.total = 0
        self.decodes = []
        self.beams = []
        self.events = []

    def context_at(self, start, left):
        return max(0, start - left), ""

    def _decode_span(self, lo, hi, prompt, *, words, beam=None):
        from loquilex_nb.worker.decoder import Hypothesis, Word

        self.decodes.append((lo / SR, hi / SR))
        self.beams.append(beam)
        got = [w for w in self.words if lo <= w.start and w.end <= hi]
        return Hypothesis(" ".join(w.word for w in got), [Word(w.word, (w.start - lo) / SR, (w.end - lo) / SR, w.probability) for w in got])

    def emit(self, type_, **fields):
        self.events.append((type_, fields))


def add_final(rev, rec, seg, a, b, text, p=0.5):
    from loquilex_nb.worker.streaming import Utterance

    ws = [dataclasses.replace(w, probability=p) for w in words(" ".join(f"{t}:{a}-{b}" for t in text.split()))]
    rec.total = int(b * SR) + SR // 2
    rev.add(Utterance(int(a * SR), int(b * SR), seg), text, ws)


def test_assign_gives_words_between_finals_to_the_nearer_and_drops_the_context():
    from loquilex_nb.worker.revisions import Pending, assign

    block = [Pending(1, 2 * SR, 4 * SR, "x", 0.5), Pending(2, 6 * SR, 8 * SR, "y", 0.5)]
    ws = words("left:0.5-1.5 a:2.1-3 b:3-3.9 gap1:4.2-4.6 gap2:5.4-5.8 c:6.1-7.9 right:8.5-9")
    got = assign(ws, block)
    assert [join(g) for g in got] == ["a b gap1", "gap2 c"]


def test_a_block_revises_several_finals_in_one_decode_once_they_have_right_context():
    from loquilex_nb.worker.revisions import GATHER_S, REVISE_BEAM, REVISE_RIGHT_S, Revisions

    rec = Transcript("the:1.0-1.3 sun:1.3-1.6 rose.:1.6-2.0 a:3.0-3.2 rod:3.2-3.6 is:3.6-3.8 "
                     "used.:3.8-4.2 help:12.0-12.5 her.:12.5-13.0")
    rev = Revisions(rec, enabled=True, left=6.0)
    add_final(rev, rec, 1, 1.0, 2.0, "the son rose.")
    add_final(rev, rec, 2, 3.0, 4.2, "a rod is used.")  # the same words: nothing to revise
    add_final(rev, rec, 3, 12.0, 13.0, "help her")
    # not due before the first final has REVISE_RIGHT_S + GATHER_S of audio after it
    assert not rev.run_one(int((2.0 + REVISE_RIGHT_S + GATHER_S) * SR) - 1)
    now = int((2.0 + REVISE_RIGHT_S + GATHER_S) * SR)
    assert rev.run_one(now)
    # one decode for the first two finals (left context, both, 3 s after the second); the
    # third has no right context yet and waits
    assert rec.decodes == [(0.0, 4.2 + REVISE_RIGHT_S)]
    assert rec.beams == [REVISE_BEAM]  # blocks are few: they get the beam search
    assert [(t, f["segment_id"], f["text"], f["data"]["old_text"]) for t, f in rec.events] == [
        ("asr.revision", 1, "the sun rose.", "the son rose.")]
    assert [p.seg for p in rev.queue] == [3]
    assert not rev.run_one(now + SR)  # nothing more is due


def test_a_revision_only_replaces_a_final_the_model_is_at_least_as_sure_of():
    from loquilex_nb.worker.revisions import GATHER_S, REVISE_RIGHT_S, Revisions

    rec = Transcript("the:1.0-1.3 sun:1.3-1.6 rose.:1.6-2.0", p=0.4)
    rev = Revisions(rec, enabled=True, left=6.0)
    add_final(rev, rec, 1, 1.0, 2.0, "the son rose.", p=0.6)
    assert rev.run_one(int((2.0 + REVISE_RIGHT_S + GATHER_S) * SR))
    assert rec.decodes and rec.events == [] and not rev.queue


def test_no_revision_decode_right_after_a_final_nor_after_the_stream_ends():
    """A stop that follows a final must not find the worker in a block decode."""
    from loquilex_nb.worker.revisions import GATHER_S, QUIET_S, REVISE_RIGHT_S, Revisions

    due = 2.0 + REVISE_RIGHT_S + GATHER_S
    rec = Transcript(f"the:1.0-1.3 sun:1.3-1.6 rose.:1.6-2.0 a:{due - 0.5}-{due}")
    rev = Revisions(rec, enabled=True, left=6.0)
    add_final(rev, rec, 1, 1.0, 2.0, "the son rose.")
    add_final(rev, rec, 2, due - 0.5, due, "a")  # a final just now (the stream is at due + 0.5 s)
    assert not rev.run_one(rec.total)
    assert not rec.decodes
    assert rev.run_one(rec.total + int(QUIET_S * SR))
    assert rec.decodes


def test_the_worker_revises_within_the_window_clients_are_promised():
    """Clients wait REVISION_WINDOW_S of audio for settled captions: a block decodes once the
    right context, the gathering and the quiet after the last final have passed, never later."""
    assert revisions.REVISE_RIGHT_S + revisions.GATHER_S + revisions.QUIET_S <= REVISION_WINDOW_S
