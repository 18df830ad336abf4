"""Worker, supervisor and path confinement under abuse (issue 9, items 1, 2, 3 and 10)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from loquilex_nb.core.config import LANGUAGES, build_asr_config, build_config, option_names
from loquilex_nb.core.paths import open_beneath
from loquilex_nb.core.sources import PushSource
from loquilex_nb.supervisor.supervisor import Supervisor
from loquilex_nb.testing import faulty_worker
from tests.helpers import FIXTURES, gone, pcm16


def spawn_worker():
    env = dict(os.environ, LOQUILEX_PARENT_PID=str(os.getpid()), HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, "-m", "loquilex_nb.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, env=env,
    )


def finish(proc, timeout):
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for f in (proc.stdin, proc.stdout):
            try:
                f.close()
            except OSError:
                pass


def test_a_huge_config_line_is_read_in_blocks_and_sigterm_still_works():
    """Item 2: the first line used to be read a byte at a time, deaf to SIGTERM."""
    proc = spawn_worker()
    proc.stdin.write(b'{"language": "' + b"x" * 600_000)  # no newline yet
    proc.stdin.flush()
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = finish(proc, 5)
    assert code == 4 and time.monotonic() - started < 2.0


def test_a_config_line_over_the_limit_is_refused():
    proc = spawn_worker()
    started = time.monotonic()
    try:
        proc.stdin.write(b"x" * (2 << 20))
        proc.stdin.flush()
    except BrokenPipeError:
        pass  # it left while we were still writing: that is the point
    assert finish(proc, 10) == 4 and time.monotonic() - started < 5


@pytest.mark.leak_settle(10)
def test_a_flooded_worker_leaves_within_a_second_of_sigterm(output_root):
    """Item 1 without a server: a writer far faster than real time, then SIGTERM."""
    cfg = build_config(PushSource(), sid="flood", output_root=output_root)
    proc = spawn_worker()
    proc.stdin.write((json.dumps(cfg.worker_payload()) + "\n").encode())
    proc.stdin.flush()
    frame = pcm16(FIXTURES / "speech.wav").tobytes()[: 64 * 1024]
    header = json.dumps({"op": "pcm", "n": len(frame), "fmt": "s16le"}).encode() + b"\n"
    stop = threading.Event()
    written = [0]

    def writer():  # blocks once the worker gives backpressure; ends on EPIPE
        try:
            while not stop.is_set():
                proc.stdin.write(header + frame)
                proc.stdin.flush()
                written[0] += 1
        except (BrokenPipeError, ValueError, OSError):
            pass

    events = []
    reading = threading.Thread(target=lambda: events.extend(proc.stdout), name="test-events")
    reading.start()
    feeding = threading.Thread(target=writer, name="test-flood")
    feeding.start()
    try:
        deadline = time.monotonic() + 60
        while b'"running"' not in b"".join(events):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(4)  # the flood fills the backlog and the pipe
        assert proc.poll() is None and written[0] > 0
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
        took = time.monotonic() - started
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        feeding.join(10)
        reading.join(10)
        proc.stdout.close()
        # the flood may have left bytes in the buffer for a pipe whose reader is gone: the
        # flush fails, the close still happens
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    assert took < 1.5, f"SIGTERM took {took:.1f} s"
    assert code in (0, 6)
    assert written[0] < 200, "no backpressure: the worker swallowed everything"


@pytest.mark.leak_settle(15)
async def test_shutdown_time_does_not_grow_with_slow_starting_sessions(output_root):
    """Item 10: 8 sessions stuck loading their model; one overall deadline for all."""
    sup = Supervisor(max_sessions=8, grace=3.0, term_grace=2.0, worker_argv=faulty_worker.argv("slow-start"))
    pids = []
    for i in range(8):
        s = await sup.create(build_config(PushSource(), sid=f"s{i}", output_root=output_root), sid=f"s{i}")
        pids.append(s.pid)
    await asyncio.sleep(1.0)
    assert all(s.state == "starting" for s in sup.list())
    started = time.monotonic()
    await sup.shutdown(timeout=4.0)
    took = time.monotonic() - started
    assert took < 5.5, f"shutdown of 8 slow-starting sessions took {took:.1f} s (deadline 4 s)"
    assert all(gone(p, 1) for p in pids)
    assert {s.end.kind for s in sup.list(include_ended=True)} <= {"terminated", "killed", "clean"}


def test_open_beneath_refuses_escapes_and_reads_what_it_opened(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.wav").write_bytes(b"inside")
    outside = tmp_path / "secret.wav"
    outside.write_bytes(b"outside")
    fd = open_beneath(root, "sub/a.wav")
    try:
        # swapped for a symlink after the open: the open file is still the inside one
        (root / "sub" / "a.wav").unlink()
        (root / "sub" / "a.wav").symlink_to(outside)
        assert os.read(fd, 100) == b"inside"
    finally:
        os.close(fd)
    for bad in ("sub/a.wav", "../secret.wav", "/etc/passwd", "sub"):
        with pytest.raises(ValueError):
            os.close(open_beneath(root, bad))
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(ValueError):
        os.close(open_beneath(root, "link/secret.wav"))


def test_languages_are_whispers():
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert LANGUAGES == set(_LANGUAGE_CODES)
    for bad in ("x" * 100, "english", "", "EN"):
        with pytest.raises(ValueError, match="language"):
            build_asr_config({"language": bad})


def test_unknown_option_lists_what_a_caller_may_set():
    with pytest.raises(ValueError) as e:
        build_asr_config({"beam_sise": 2})
    known = str(e.value).split("known: ")[1].split(", ")
    assert known == option_names() and {"formats", "final_lines", "out", "realtime", "model"} <= set(known)
    assert "model" not in option_names(server=True)
