"""The embedded notebook API end to end, with the real model and real workers."""

import statistics
import threading
import time

import numpy as np
import psutil
import pytest
import srt
import webvtt

import loquilex_nb as lx
from loquilex_nb.core.events import STATES
from loquilex_nb.supervisor.runtime import RUNTIME

from tests.helpers import FIXTURES, SAMPLE, assert_wer_near_batch, gone, pcm16


def loop_threads():
    return [t for t in threading.enumerate() if t.name == "loquilex-loop"]


def test_file_session_transcribes_and_writes_parsable_captions(output_root):
    with lx.session(str(FIXTURES / "speech.wav"), realtime=False, output_root=output_root, out="talk") as s:
        events = list(s.events())
        pid = s.pid
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seq must be gap-free from 1"
    assert {e.type for e in events} <= {"status", "asr.partial", "asr.final", "error", "eos"}
    assert events[-1].type == "eos" and s.end.kind == "clean" and s.status == "stopped"
    # a server client takes each of these (it dropped the worker's own `finished` once)
    assert {"finished", "stopped"} <= {e.data["state"] for e in events if e.type == "status"} <= set(STATES)
    finals = [e for e in events if e.type == "asr.final"]
    assert finals == s.finals and len(finals) >= 5
    assert_wer_near_batch(FIXTURES / "speech.wav", s.text)
    # partials of a segment come before its final and share its segment_id
    for f in finals:
        for p in (e for e in events if e.type == "asr.partial" and e.segment_id == f.segment_id):
            assert p.seq < f.seq
    # words carry session-relative times and confidences inside the final's span
    for f in finals:
        assert f.words and all(f.t0 - 0.5 <= w["t0"] <= w["t1"] <= f.t1 + 0.5 for w in f.words)
        assert all(0.0 <= w["p"] <= 1.0 for w in f.words)
    assert [f.t0 for f in finals] == sorted(f.t0 for f in finals)

    out = s.outputs
    assert out["vtt"].parent == output_root / "talk"
    cues = list(webvtt.read(str(out["vtt"])))
    assert [c.text for c in cues] == [f.text for f in finals]
    starts = [c.start_in_seconds for c in cues]
    assert starts == sorted(starts)
    assert all(a.end_in_seconds <= b.start_in_seconds for a, b in zip(cues, cues[1:], strict=False))
    subs = list(srt.parse(out["srt"].read_text()))
    assert [x.content for x in subs] == [f.text for f in finals]
    assert out["final"].read_text().splitlines() == [f.text for f in finals]
    assert out["partial"].read_text() == ""
    assert not [p for p in (output_root / "talk").iterdir() if p.name.endswith(".tmp")]
    assert gone(pid, 0.1)
    assert loop_threads() == []


def test_push_source_feed_and_stop(output_root):
    samples = pcm16(FIXTURES / "short.wav")
    with lx.session(lx.PushSource(), output_root=output_root) as s:
        half = len(samples) // 2
        for chunk in np.array_split(samples[:half], 10):
            s.feed(chunk.tobytes())  # int16 bytes
        for chunk in np.array_split(samples[half:], 10):
            s.feed(chunk.astype(np.float32) / 32768.0)  # float arrays
        end = s.stop()
        events = list(s.events())
    assert end.kind == "clean"
    assert events[-1].type == "eos"
    assert_wer_near_batch(FIXTURES / "short.wav", s.text)


def test_feed_rejects_bad_chunks_before_sending(output_root):
    with lx.session(lx.PushSource(), output_root=output_root) as s:
        with pytest.raises(ValueError, match="even length"):
            s.feed(b"\x01\x02\x03")
        with pytest.raises(ValueError, match="mono"):
            s.feed(np.zeros((100, 2), dtype=np.int16))
        with pytest.raises(ValueError, match="NaN"):
            s.feed(np.array([0.1, np.nan], dtype=np.float32))
        with pytest.raises(ValueError, match="int16 bytes or a NumPy array"):
            s.feed("hello")
        assert s.status == "running" or s.status == "starting"
    assert s.end.kind == "clean"


async def test_async_session(output_root):
    samples = pcm16(FIXTURES / "short.wav")
    async with lx.session(lx.PushSource(), output_root=output_root) as s:
        for chunk in np.array_split(samples, 8):
            await s.feed(chunk)
        await s.stop()
        types = [ev.type async for ev in s]
    assert types[-1] == "eos" and "asr.final" in types
    assert s.end.kind == "clean"
    assert loop_threads() == []


def test_events_wake_on_each_event_not_on_a_timer(output_root, event_waits):
    """An idle session costs its reader no wake-ups, and each event reaches it promptly."""
    waits = event_waits
    published: dict[int, float] = {}
    got: list[tuple[lx.Event, float]] = []

    def read(s):
        for ev in s.events():
            got.append((ev, time.monotonic()))

    def states():
        return [ev.data["state"] for ev, _ in list(got) if ev.type == "status"]

    with lx.session(lx.PushSource(), output_root=output_root) as s:
        core = RUNTIME.supervisor.get(s.id)

        async def subscribe():  # on the loop, where the supervisor publishes
            core.subscribe(lambda ev: published.setdefault(ev.seq, time.monotonic()))

        RUNTIME.call(lambda _sup: subscribe())
        reader = threading.Thread(target=read, args=(s,), name="test-reader")
        reader.start()
        deadline = time.monotonic() + 120
        while "running" not in states():
            assert time.monotonic() < deadline and reader.is_alive(), "never running"
            time.sleep(0.02)
        time.sleep(0.1)  # the reader is back in its wait
        waits_before, events_before = len(waits), len(got)
        time.sleep(1.5)  # no audio: nothing to say
        idle_waits, idle_events = len(waits) - waits_before, len(got) - events_before
        s.stop()
        reader.join(30)
    assert not reader.is_alive()
    assert idle_waits <= idle_events, f"the reader woke {idle_waits} times for {idle_events} events: a timer, not the log"
    delays = [t - published[ev.seq] for ev, t in got if ev.seq in published]
    assert len(delays) >= 4, got  # stopping, finished, stopped, eos at least
    assert statistics.median(delays) < 0.2, delays
    assert got[-1][0].type == "eos"


def test_keyboard_interrupt_inside_with_block_stops_everything(output_root):
    with pytest.raises(KeyboardInterrupt):
        with lx.session(lx.PushSource(), output_root=output_root) as s:
            pid = s.pid
            assert psutil.pid_exists(pid)
            raise KeyboardInterrupt
    assert s.status == "stopped" and s.end is not None
    assert gone(pid, 0.1), "the worker must be gone when the with block returns"
    assert loop_threads() == [], "the loop thread must be joined when the with block returns"


def test_exception_inside_with_block_stops_everything(output_root):
    with pytest.raises(ZeroDivisionError):
        with lx.session(str(SAMPLE), realtime=True, output_root=output_root) as s:
            pid = s.pid
            raise ZeroDivisionError("inside the block")
    assert gone(pid, 0.1) and s.end is not None and loop_threads() == []


def test_realtime_file_gives_partials_with_stable_segment_ids(output_root):
    with lx.session(str(FIXTURES / "short.wav"), realtime=True, output_root=output_root) as s:
        events = list(s.events())
    finals = [e for e in events if e.type == "asr.final"]
    partials = [e for e in events if e.type == "asr.partial"]
    assert finals and partials
    final_ids = {f.segment_id for f in finals}
    assert {p.segment_id for p in partials} <= final_ids
    assert "latency" in finals[0].data
    assert_wer_near_batch(FIXTURES / "short.wav", s.text)


def test_sessions_list_and_stop_all(output_root):
    a = lx.session(lx.PushSource(), output_root=output_root).start()
    b = lx.session(lx.PushSource(), output_root=output_root).start()
    try:
        assert {x["id"] for x in lx.sessions()} == {a.id, b.id}
        snap = lx.resources()
        assert {w["sid"] for w in snap["sessions"]} == {a.id, b.id}
        assert all(w["alive"] and w["rss"] > 0 for w in snap["sessions"])
        assert snap["process"]["threads"] >= 2
        lx.stop_all()
        assert a.status == "stopped" and b.status == "stopped"
        assert lx.sessions() == []
    finally:
        a.close()
        b.close()
    assert loop_threads() == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out": "../escape"}, "'..'"),
        ({"out": "/etc"}, "absolute"),
        ({"model": "/nonexistent/model"}, "does not exist"),
        ({"beam_sise": 3}, "unknown option"),
        ({"partial_interval": 0}, "partial_interval"),
        ({"formats": "vtt,doc"}, "formats"),
        ({"final_lines": 0}, "final_lines"),
        ({"realtime": "yes"}, "realtime"),
    ],
)
def test_bad_options_raise_before_any_process_starts(output_root, kwargs, message):
    before = psutil.Process().children()
    with pytest.raises(ValueError, match=message):
        lx.session(lx.PushSource(), output_root=output_root, **kwargs)
    assert psutil.Process().children() == before
    assert loop_threads() == []


def test_missing_and_wrong_sources_raise(output_root, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        lx.session(str(tmp_path / "nope.wav"), output_root=output_root)
    with pytest.raises(ValueError, match="not a file"):
        lx.session(str(tmp_path), output_root=output_root)
    with pytest.raises(ValueError, match="source must be"):
        lx.session(42, output_root=output_root)


def test_symlink_escape_is_rejected(output_root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    output_root.mkdir(parents=True)
    (output_root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="link"):
        lx.session(lx.PushSource(), output_root=output_root, out="link")


def test_model_dir_without_model_is_rejected(output_root, tmp_path):
    with pytest.raises(ValueError, match="model.bin"):
        lx.session(lx.PushSource(), output_root=output_root, model=str(tmp_path))


def test_runtime_is_released_by_the_last_handle(output_root):
    a = lx.session(lx.PushSource(), output_root=output_root).start()
    b = lx.session(lx.PushSource(), output_root=output_root).start()
    a.close()
    assert len(loop_threads()) == 1 and b.status in ("running", "starting")
    b.close()
    b.close()  # idempotent
    assert loop_threads() == [] and RUNTIME.supervisor is None


def test_microphone_without_sounddevice_is_a_clear_error(output_root):
    import importlib.util

    if importlib.util.find_spec("sounddevice") is not None:
        pytest.skip("sounddevice is installed here")
    with pytest.raises(ValueError, match="sounddevice"):
        lx.session(lx.MicSource(), output_root=output_root)
