"""Server mode, a file outside the server's root_dir: the kernel decodes it and streams it as push audio.

The server never reads the path (its confinement is unchanged); the session gives the same
kinds of events and the same caption files as a server-side file session of the same audio,
paced at the speed of speech for `realtime=True` and as fast as the server takes it otherwise.
"""

import shutil
import time

import loquilex_nb as lx

from tests.helpers import FIXTURES, wer

# a short stop grace: a stop sent while the worker is still far behind would end "terminated"
LOQUILEX = {"sweep_interval": 0.5, "stop_grace": 1.0}


DURATION = 111622 / 2 / 16000 - 0.1  # short.wav, without its header


async def caption(path, **options):
    async with lx.session(str(path), **options) as s:
        t0 = time.monotonic()
        events = [ev async for ev in s]
        return s, events, time.monotonic() - t0


async def test_a_file_only_the_kernel_reads_gives_what_a_server_file_gives(server, jp_serverapp, jp_root_dir, tmp_path):
    outside = tmp_path / "kernel-only" / "speech.wav"
    outside.parent.mkdir()
    shutil.copy(FIXTURES / "speech.wav", outside)
    shutil.copy(FIXTURES / "speech.wav", jp_root_dir / "speech.wav")
    ours, ours_events, _ = await caption(outside, realtime=False, out="kernel-fed")
    theirs, their_events, _ = await caption(jp_root_dir / "speech.wav", realtime=False, out="server-read")
    info = jp_serverapp.web_app.settings["loquilex_manager"].supervisor.get(ours.id).info()
    assert info["source"]["kind"] == "push", "the server never saw the path"
    for s, events in ((ours, ours_events), (theirs, their_events)):
        assert events[-1].type == "eos" and s.end.kind == "clean", s.end  # not cut short by the stop grace
        assert wer((FIXTURES / "speech.txt").read_text(), s.text) <= 0.2, s.text
    assert {e.type for e in ours_events} >= {e.type for e in their_events} - {"asr.partial"}
    assert sorted(p.name for p in ours.outputs.values()) == sorted(p.name for p in theirs.outputs.values())
    assert ours.outputs["vtt"].parent.name == "kernel-fed"
    for s in (ours, theirs):
        assert s.outputs["vtt"].read_text().startswith("WEBVTT")
        assert s.outputs["final"].read_text().strip()


async def test_realtime_streams_at_the_speed_of_speech(server, tmp_path):
    outside = tmp_path / "short.wav"
    shutil.copy(FIXTURES / "short.wav", outside)
    s, events, took = await caption(outside, realtime=True)
    assert took >= DURATION * 0.9, f"{took:.2f} s for {DURATION:.2f} s of audio: not paced"
    assert events[-1].type == "eos" and s.end.kind == "clean" and s.finals


async def test_closing_early_stops_the_stream(server, tmp_path):
    outside = tmp_path / "speech.wav"
    shutil.copy(FIXTURES / "speech.wav", outside)
    async with lx.session(str(outside), realtime=True) as s:
        async for ev in s:
            if ev.type in ("asr.partial", "asr.final"):
                break  # well before the end of the 20 s file
        feeder = s._core._feeder
    # (how it ends is the server's stop ladder: with this test's 1 s grace, maybe by SIGTERM)
    assert s.end is not None and feeder.done()
    assert s.finals[-1].t1 < 15.0, "the whole file was not streamed"
