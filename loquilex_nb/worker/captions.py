"""Caption files that readers can poll at any moment.

Every file is replaced atomically, so a notebook widget or a tail-ing user
never sees a half-written VTT/SRT. Files are rewritten whole on each final:
caption sessions are short enough that this is cheap and keeps the format
trivially valid.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

__all__ = [
    "atomic_write_text",
    "format_vtt_time",
    "format_srt_time",
    "Cue",
    "CaptionWriter",
    "FORMATS",
]

FORMATS = frozenset({"vtt", "srt", "txt"})

# Smallest cue length; zero-length cues are rejected or hidden by some players.
_MIN_CUE = 0.01


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so readers see either old or new content."""
    path = Path(path)
    # Same directory as the target: os.replace is only atomic within a filesystem.
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new hidden file beside ``path``, mode 0666 less the umask like any file a user makes
    (mkstemp's 0600 would hide captions from the user's group)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {str(path)!r}")


def _fsync_dir(directory: Path) -> None:
    # Persists the rename itself; not supported everywhere (e.g. Windows), so best effort.
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _split_ms(t: float) -> tuple[int, int, int, int]:
    # Round once on total milliseconds so 59.9996 s becomes 00:01:00.000, not 00:00:59.1000.
    total_ms = max(0, int(round(float(t) * 1000)))
    hours, rem = divmod(total_ms, 3_600_000)
    minutes, rem = divmod(rem, 60_000)
    seconds, ms = divmod(rem, 1000)
    return hours, minutes, seconds, ms


def format_vtt_time(t: float) -> str:
    """Seconds -> ``HH:MM:SS.mmm`` (negative clamps to zero)."""
    h, m, s, ms = _split_ms(t)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


def format_srt_time(t: float) -> str:
    """Seconds -> ``HH:MM:SS,mmm`` (negative clamps to zero)."""
    h, m, s, ms = _split_ms(t)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    text: str


def _one_line(text: str) -> str:
    # Blank lines terminate cues in VTT/SRT, so caption text must stay on one line.
    return " ".join(text.split())


def _vtt_escape(text: str) -> str:
    # "-->" or a stray "<" in a payload would be read as timing/markup by VTT parsers.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _render_vtt(cues: Iterable[Cue]) -> str:
    parts = ["WEBVTT\n\n"]
    for cue in cues:
        parts.append(
            f"{format_vtt_time(cue.start)} --> {format_vtt_time(cue.end)}\n{_vtt_escape(cue.text)}\n\n"
        )
    return "".join(parts)


def _render_srt(cues: Iterable[Cue]) -> str:
    parts = []
    for i, cue in enumerate(cues, 1):
        parts.append(f"{i}\n{format_srt_time(cue.start)} --> {format_srt_time(cue.end)}\n{cue.text}\n\n")
    return "".join(parts)


class CaptionWriter:
    """Writes live partial text and accumulated final cues into ``out_dir``."""

    def __init__(
        self,
        out_dir: Path,
        *,
        formats: Iterable[str] = ("vtt", "srt", "txt"),
        final_lines: int = 50,
    ) -> None:
        if isinstance(formats, str):
            # A bare "vtt" would otherwise be iterated as {"v", "t"}.
            formats = (formats,)
        fmts = frozenset(formats)
        unknown = fmts - FORMATS
        if unknown:
            raise ValueError(f"unknown caption formats {sorted(unknown)!r}; expected a subset of {sorted(FORMATS)!r}")
        if isinstance(final_lines, bool) or not isinstance(final_lines, int) or final_lines < 1:
            raise ValueError(f"final_lines must be an int >= 1, got {final_lines!r}")

        self._dir = Path(out_dir)
        self._formats = fmts
        self._final_lines = final_lines
        self._cues: list[Cue] = []
        self._recent: deque[str] = deque(maxlen=final_lines)
        self._by_segment: dict[int, int] = {}  # segment id -> index in _cues, for revisions
        self._closed = False
        self._partial_shown = False  # partial.txt holds text (an empty one needs no rewrite)

        self._paths: dict[str, Path] = {"partial": self._dir / "partial.txt"}
        if "txt" in fmts:
            self._paths["final"] = self._dir / "final.txt"
        if "vtt" in fmts:
            self._paths["vtt"] = self._dir / "captions.vtt"
        if "srt" in fmts:
            self._paths["srt"] = self._dir / "captions.srt"

        self._dir.mkdir(parents=True, exist_ok=True)
        # Create everything up front so pollers never hit a missing file.
        atomic_write_text(self._paths["partial"], "")
        self._write_finals()

    @property
    def outputs(self) -> dict[str, Path]:
        return dict(self._paths)

    @property
    def cues(self) -> list[Cue]:
        return list(self._cues)

    def partial(self, text: str) -> None:
        """Show ``text`` as the in-progress line."""
        line = _one_line(text)
        atomic_write_text(self._paths["partial"], line + "\n" if line else "")
        self._partial_shown = bool(line)

    def _clear_partial(self) -> None:
        # a stop of a session that heard nothing must not wait for two fsyncs
        if self._partial_shown:
            atomic_write_text(self._paths["partial"], "")
            self._partial_shown = False

    def final(self, text: str, t0: float, t1: float, segment_id: int | None = None) -> None:
        """Commit a finished utterance spanning ``t0``..``t1`` seconds."""
        line = _one_line(text)
        if not line:
            return
        prev_end = self._cues[-1].end if self._cues else 0.0
        # NaN would poison max() and every later clamp; treat it as "no timing".
        t0 = float(t0) if math.isfinite(t0) else prev_end
        t1 = float(t1) if math.isfinite(t1) else t0
        # Recognisers may report overlapping or regressing timestamps; players
        # need ordered, non-overlapping cues, so shift rather than drop.
        start = max(t0, prev_end, 0.0)
        end = max(t1, start + _MIN_CUE)
        # Snap to the millisecond grid used in the files so the next cue's
        # clamp compares against exactly what was written.
        start, end = round(start, 3), round(end, 3)
        if end <= start:
            end = round(start + _MIN_CUE, 3)
        if segment_id is not None:
            self._by_segment[segment_id] = len(self._cues)
        self._cues.append(Cue(start, end, line))
        self._recent.append(line)
        self._write_finals()
        self._clear_partial()

    def revise(self, segment_id: int, text: str) -> bool:
        """Replace the text of an earlier final (same cue times); False if it is unknown."""
        line = _one_line(text)
        i = self._by_segment.get(segment_id)
        if i is None or not line:
            return False
        cue = self._cues[i]
        self._cues[i] = Cue(cue.start, cue.end, line)
        self._recent = deque((c.text for c in self._cues[-self._final_lines :]), maxlen=self._final_lines)
        self._write_finals()
        return True

    def close(self) -> None:
        """Clear the partial line; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._clear_partial()

    def __enter__(self) -> CaptionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_finals(self) -> None:
        if "final" in self._paths:
            body = "".join(line + "\n" for line in self._recent)
            atomic_write_text(self._paths["final"], body)
        if "vtt" in self._paths:
            atomic_write_text(self._paths["vtt"], _render_vtt(self._cues))
        if "srt" in self._paths:
            atomic_write_text(self._paths["srt"], _render_srt(self._cues))
