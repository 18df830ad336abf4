"""Where a session's audio comes from, and the one validator of a user's `source` argument."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any


class PushSource:
    """Audio you feed yourself: `s.feed(int16 bytes or NumPy array)`, 16 kHz mono."""

    def describe(self) -> dict[str, Any]:
        return {"kind": "push"}


class MicSource:
    """The default (or given) microphone, via the optional `sounddevice` package."""

    def __init__(self, device: int | str | None = None) -> None:
        self.device = device

    def describe(self) -> dict[str, Any]:
        if importlib.util.find_spec("sounddevice") is None:
            raise ValueError("microphone input needs the optional 'sounddevice' package: pip install 'loquilex-nb[mic]'")
        return {"kind": "mic", "device": self.device}


def describe_source(source: Any, realtime: bool) -> dict[str, Any]:
    if isinstance(source, (PushSource, MicSource)):
        return source.describe()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise ValueError(f"audio file {str(source)!r} does not exist")
        if not path.is_file():
            raise ValueError(f"audio source {str(source)!r} is not a file")
        if not os.access(path, os.R_OK):
            raise ValueError(f"audio file {str(source)!r} is not readable")
        return {"kind": "file", "path": str(path.resolve()), "realtime": bool(realtime)}
    raise ValueError(f"source must be a file path, lx.PushSource() or lx.MicSource(), got {type(source).__name__}")
