"""The notebook API in server mode against a real server: same handle, transparent resume."""

import asyncio
import json
import shutil

import numpy as np
import pytest

import loquilex_nb as lx

from tests.helpers import FIXTURES, assert_wer_near_batch, pcm16

LOQUILEX = {"sweep_interval": 0.5}


async def test_push_session_through_the_server_with_a_dropped_socket(server, jp_serverapp):
    manager = jp_serverapp.web_app.settings["loquilex_manager"]
    samples = pcm16(FIXTURES / "speech.wav")
    async with lx.session(lx.PushSource()) as s:
        assert s.backend is server
        chunks = np.array_split(samples, 40)
        for i, chunk in enumerate(chunks):
            await s.feed(chunk)
            # at the speed of speech, as a live client does: audio fed faster than the worker
            # decodes and then stopped may be dropped past the stop budget (an audio-dropped
            # event), and this test is about resuming across drops without loss
            await asyncio.sleep(len(chunk) / 16000)
            if i in (15, 30):
                await asyncio.sleep(0.5)
                # the server cuts this client off; the handle must resume without loss
                for conn in list(manager.hub.channels[s.id].connections):
                    conn.close(4008, "client too slow")
        await s.stop()
        events = [ev async for ev in s]
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), "no event duplicated or reordered across the drops"
    server_log = manager.supervisor.get(s.id).log
    # only a partial superseded by a newer one of its segment may be coalesced away
    must_have = {e.seq for e in server_log if e.type != "asr.partial"}
    assert must_have <= set(seqs), f"lost: {sorted(must_have - set(seqs))}"
    assert [e.text for e in events if e.type == "asr.final"] == [e.text for e in server_log if e.type == "asr.final"]
    assert events[-1].type == "eos" and s.end.kind == "clean"
    assert_wer_near_batch(FIXTURES / "speech.wav", s.text)
    info = manager.supervisor.get(s.id).info()
    assert info["end"]["kind"] == "clean"


async def test_file_session_in_server_mode_writes_on_the_server(server, jp_root_dir):
    shutil.copy(FIXTURES / "short.wav", jp_root_dir / "short.wav")
    async with lx.session(str(jp_root_dir / "short.wav"), realtime=False, out="mine") as s:
        types = [ev.type async for ev in s]
    assert "asr.final" in types and types[-1] == "eos"
    vtt = s.outputs["vtt"]
    assert vtt.parent.name == "mine" and vtt.read_text().startswith("WEBVTT")


async def test_server_validation_errors_surface_as_value_errors(server, jp_root_dir, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        lx.session(str(tmp_path / "outside.wav"))  # outside the root: the kernel reads it (test_kernel_file)
    s = lx.session(lx.PushSource(), beam_sise=3)
    with pytest.raises(ValueError, match="beam_sise"):
        await s.astart()
    await s.aclose()
