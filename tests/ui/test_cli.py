from __future__ import annotations

from pathlib import Path

import pytest

from loquilex_nb.cli import SAMPLE, audio_duration, main
from tests.helpers import FIXTURES



def test_transcribe_short_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "x"
    code = main(["transcribe", str(FIXTURES / "short.wav"), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "Hello, this is a short test." in captured.out.splitlines()
    for name in ("captions.vtt", "captions.srt", "final.txt"):
        assert (out / name).is_file()
        assert str(out / name) in captured.out
    assert "short test" in (out / "final.txt").read_text(encoding="utf-8")
    assert "Traceback" not in captured.err


def test_transcribe_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["transcribe", str(tmp_path / "nope.wav"), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "does not exist" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_transcribe_bad_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["transcribe", str(FIXTURES / "short.wav"), "--out", str(tmp_path / "x"), "--formats", "vtt,doc"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "formats" in err


def test_transcribe_undecodable_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["transcribe", str(FIXTURES / "corrupt.wav"), "--out", str(tmp_path / "x")])
    captured = capsys.readouterr()
    assert code == 1
    assert "error: session failed" in captured.err and "corrupt.wav" in captured.err
    assert captured.out == ""


def test_sample_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample-path"]) == 0
    printed = Path(capsys.readouterr().out.strip())
    assert printed == SAMPLE and printed.is_file()


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize("argv", [[], ["transcribe"], ["frobnicate"], ["transcribe", "a.wav", "--nope"],
                                  ["transcribe", "a.wav", "--out"]])
def test_usage_errors_are_one_line_and_return_2(argv, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "--help" in one_error_line(capsys.readouterr().err)


def test_out_naming_an_existing_file_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "taken").write_text("mine")
    assert main(["transcribe", str(FIXTURES / "short.wav"), "--out", str(tmp_path / "taken")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "taken" in line
    assert (tmp_path / "taken").read_text() == "mine"


def test_an_unforeseen_failure_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    from loquilex_nb import handle as api

    def broken(*args, **kwargs):
        raise RuntimeError("the supervisor\nis gone")

    monkeypatch.setattr(api, "session", broken)
    assert main(["transcribe", str(FIXTURES / "short.wav")]) == 1
    assert one_error_line(capsys.readouterr().err) == "error: the supervisor is gone"


def test_caption_files_follow_the_umask(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import stat

    old = os.umask(0o027)
    try:
        assert main(["transcribe", str(FIXTURES / "short.wav"), "--out", str(tmp_path / "x")]) == 0
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "x").iterdir()}
    assert modes and set(modes.values()) == {0o640}, modes


def test_audio_duration() -> None:
    assert audio_duration(str(FIXTURES / "short.wav")) == pytest.approx(3.49, abs=0.02)
    assert audio_duration(str(FIXTURES / "corrupt.wav")) is None


@pytest.mark.leak_settle(15)
def test_lab_prints_its_url_with_the_token_last(tmp_path: Path) -> None:
    """`make run` = `loquilex-nb lab`: once the server answers, its URL (with token) is framed last."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "nb.ipynb").write_text("{}")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "JUPYTER_TOKEN")}
    for d in ("runtime", "config", "data"):
        (tmp_path / d).mkdir()
    env.update(JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"), JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    proc = subprocess.Popen([sys.executable, "-m", "loquilex_nb.cli", "lab", f"--port={port}", f"--root={tmp_path}", "--open=nb.ipynb"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        ours = re.compile(rf"  http://127\.0\.0\.1:{port}/lab/tree/nb\.ipynb\?token=[0-9a-f]{{48}}\n")
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while not any(ours.fullmatch(line) for line in lines):
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)[-3000:]
            lines.append(proc.stderr.readline())
        lines += [proc.stderr.readline() for _ in range(4)]
        url = next(line.strip() for line in lines if ours.fullmatch(line))
        assert "ready" in lines[-7] and "Ctrl-C" in lines[-3] and set(lines[-2].strip()) == {"="}, lines[-8:]
        token = url.split("token=")[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=10) as r:
            assert r.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        proc.stderr.close()
