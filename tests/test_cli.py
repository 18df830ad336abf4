from __future__ import annotations

from pathlib import Path

import pytest

from loquilex_nb.cli import SAMPLE, audio_duration, main

FIXTURES = Path(__file__).resolve().parent / "fixtures"


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


def test_usage_errors_return_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["transcribe"]) == 2
    assert "usage:" in capsys.readouterr().err


def test_audio_duration() -> None:
    assert audio_duration(str(FIXTURES / "short.wav")) == pytest.approx(3.49, abs=0.02)
    assert audio_duration(str(FIXTURES / "corrupt.wav")) is None
