from __future__ import annotations

from pathlib import Path

import pytest
import srt
import webvtt

from loquilex_nb.worker import captions
from loquilex_nb.worker.captions import CaptionWriter, atomic_write_text, format_srt_time, format_vtt_time
from loquilex_nb.core.paths import ensure_dir_under, resolve_under


def _temp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def _vtt_seconds(ts: object) -> float:
    h, m, s, ms = ts.to_tuple()  # type: ignore[attr-defined]
    return h * 3600 + m * 60 + s + ms / 1000


def _vtt_cues(path: Path) -> list[tuple[float, float, str]]:
    return [(_vtt_seconds(c.start_time), _vtt_seconds(c.end_time), c.text) for c in webvtt.read(str(path))]


def _srt_cues(path: Path) -> list[tuple[float, float, str]]:
    return [
        (s.start.total_seconds(), s.end.total_seconds(), s.content)
        for s in srt.parse(path.read_text(encoding="utf-8"))
    ]


# -- time formatting ---------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "vtt", "srt_"),
    [
        (0, "00:00:00.000", "00:00:00,000"),
        (1.5, "00:00:01.500", "00:00:01,500"),
        (59.9996, "00:01:00.000", "00:01:00,000"),
        (3723.004, "01:02:03.004", "01:02:03,004"),
        (-2.0, "00:00:00.000", "00:00:00,000"),
    ],
)
def test_format_times(t: float, vtt: str, srt_: str) -> None:
    assert format_vtt_time(t) == vtt
    assert format_srt_time(t) == srt_


# -- CaptionWriter -----------------------------------------------------------


def test_files_exist_after_construction(tmp_path: Path) -> None:
    out = tmp_path / "caps"
    w = CaptionWriter(out)
    assert set(w.outputs) == {"partial", "final", "vtt", "srt"}
    for p in w.outputs.values():
        assert p.exists() and p.parent == out
    assert w.outputs["vtt"].read_text() == "WEBVTT\n\n"
    assert w.outputs["partial"].read_text() == ""
    assert list(webvtt.read(str(w.outputs["vtt"]))) == []
    assert list(srt.parse(w.outputs["srt"].read_text())) == []
    w.close()


def test_outputs_follow_formats(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path, formats=["vtt"])
    assert set(w.outputs) == {"partial", "vtt"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.vtt", "partial.txt"]
    w.close()


def test_finals_parse_and_are_monotonic(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path)
    # Overlapping, regressing and zero-length timings, as a recogniser may emit.
    w.final("Hello world.", 0.5, 2.0)
    w.final("Second line\nwith a break.", 1.5, 3.0)
    w.final("Out of order.", 1.0, 0.5)
    w.final("   ", 4.0, 5.0)  # ignored
    w.final("Last one.", 10.0, 12.25)

    texts = ["Hello world.", "Second line with a break.", "Out of order.", "Last one."]
    for cues in (_vtt_cues(w.outputs["vtt"]), _srt_cues(w.outputs["srt"])):
        assert [c[2] for c in cues] == texts
        prev_end = 0.0
        for start, end, _ in cues:
            assert start >= prev_end - 1e-9
            assert end > start
            prev_end = end
        assert cues[0][:2] == pytest.approx((0.5, 2.0))
        assert cues[1][:2] == pytest.approx((2.0, 3.0))
        assert cues[2][:2] == pytest.approx((3.0, 3.01))
        assert cues[3][:2] == pytest.approx((10.0, 12.25))
    assert w.outputs["final"].read_text().splitlines() == texts
    w.close()


def test_non_finite_times_stay_monotonic(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path, formats=("srt",))
    w.final("one", 1.0, 2.0)
    w.final("two", float("nan"), float("inf"))
    w.final("three", 5.0, 6.0)
    times = [t for c in _srt_cues(w.outputs["srt"]) for t in c[:2]]
    assert times == pytest.approx([1.0, 2.0, 2.0, 2.01, 5.0, 6.0])
    w.close()


def test_vtt_escapes_markup(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path, formats=("vtt",))
    w.final("a --> b & <c>", 0.0, 1.0)
    body = w.outputs["vtt"].read_text()
    assert body.count("-->") == 1
    assert len(list(webvtt.read(str(w.outputs["vtt"])))) == 1
    w.close()


def test_final_txt_keeps_last_n(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path, final_lines=3)
    for i in range(7):
        w.final(f"line {i}", float(i), i + 0.5)
    assert w.outputs["final"].read_text() == "line 4\nline 5\nline 6\n"
    # The subtitle files keep every cue; only final.txt is a rolling window.
    assert len(_srt_cues(w.outputs["srt"])) == 7
    w.close()


def test_partial_single_line_and_cleared(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path)
    partial = w.outputs["partial"]
    w.partial("hello\nthere  world\r\n")
    assert partial.read_text() == "hello there world\n"
    assert len(partial.read_text().splitlines()) == 1
    w.final("hello there world", 0.0, 1.0)
    assert partial.read_text() == ""
    w.partial("next")
    w.close()
    assert partial.read_text() == ""
    w.close()  # idempotent
    assert partial.read_text() == ""


def test_no_temp_files_left(tmp_path: Path) -> None:
    w = CaptionWriter(tmp_path)
    for i in range(20):
        w.partial(f"partial {i}")
        w.final(f"final {i}", i, i + 1)
    w.close()
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "captions.srt",
        "captions.vtt",
        "final.txt",
        "partial.txt",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"formats": ("vtt", "ass")},
        {"formats": ["json"]},
        {"final_lines": 0},
        {"final_lines": -3},
        {"final_lines": 2.5},
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CaptionWriter(tmp_path, **kwargs)


# -- atomic_write_text -------------------------------------------------------


def test_atomic_write_replaces(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert _temp_files(tmp_path) == []


def test_atomic_write_failure_keeps_old_content_non_str(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_text(target, b"bytes are not text")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert _temp_files(tmp_path) == []


def test_atomic_write_failure_keeps_old_content_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(fd: int) -> None:
        raise OSError("simulated fsync failure")

    monkeypatch.setattr(captions.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    # Checked by full listing too, in case a leftover lacked the .tmp suffix.
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


# -- paths -------------------------------------------------------------------


def test_resolve_under_accepts_nested(tmp_path: Path) -> None:
    assert resolve_under(tmp_path, "a/b/c.txt") == tmp_path.resolve() / "a" / "b" / "c.txt"
    assert resolve_under(str(tmp_path), Path("x")) == tmp_path.resolve() / "x"


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "a/../b", "a\\..\\b"])
def test_resolve_under_rejects_dotdot(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.\.") as exc:
        resolve_under(tmp_path, name)
    assert repr(name) in str(exc.value)


@pytest.mark.parametrize("name", ["/etc/passwd", "/"])
def test_resolve_under_rejects_absolute(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="absolute") as exc:
        resolve_under(tmp_path, name)
    assert repr(name) in str(exc.value)


@pytest.mark.parametrize("name", ["", "   "])
def test_resolve_under_rejects_empty(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        resolve_under(tmp_path, name)


def test_resolve_under_rejects_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside") as exc:
        resolve_under(root, "link/file.txt")
    assert repr("link/file.txt") in str(exc.value)
    with pytest.raises(ValueError, match="outside"):
        ensure_dir_under(root, "link/sub")
    assert not (outside / "sub").exists()


def test_resolve_under_allows_symlink_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    assert resolve_under(tmp_path, "alias/f") == (tmp_path / "real" / "f").resolve()


def test_ensure_dir_under_creates(tmp_path: Path) -> None:
    d = ensure_dir_under(tmp_path, "sessions/abc")
    assert d.is_dir() and d == (tmp_path / "sessions" / "abc").resolve()
    assert ensure_dir_under(tmp_path, "sessions/abc") == d  # exist_ok
    with pytest.raises(ValueError):
        ensure_dir_under(tmp_path, "../escape")
    assert not (tmp_path.parent / "escape").exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_caption_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    """Like any file a user makes: 0666 less the umask (mkstemp's 0600 would hide them)."""
    import os
    import stat

    old = os.umask(umask)
    try:
        w = CaptionWriter(tmp_path / "out", formats=("vtt", "srt", "txt"))
        w.final("hello", 0.0, 1.0)
        w.close()
    finally:
        os.umask(old)
    files = sorted((tmp_path / "out").iterdir())
    assert files
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {p.name: mode for p in files}
