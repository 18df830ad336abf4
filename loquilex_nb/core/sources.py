"""Where a session's audio comes from, and the one validator of a session's `source`
(embedded `lx.session`, the kernel's server client and the server's POST all use `check_source`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping


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


SOURCE_KEYS = ("kind", "path", "realtime")  # a source on the wire (POST sessions)
WIRE_KINDS = ("file", "push")  # a client cannot open the server's microphone


def check_source(source: Any, realtime: Any = True, *, wire: bool = False) -> dict[str, Any]:
    """The one validator of a session's `source`; ValueError before any process starts.

    A user's argument (`wire=False`: a path, `lx.PushSource()`, `lx.MicSource()`) or the
    protocol's object (`wire=True`: `{"kind": "file", "path", "realtime"?}` or `{"kind": "push"}`)
    becomes `{"kind": "push"}`, `{"kind": "mic", "device"}` or `{"kind": "file", "path", "realtime"}`
    with the path as given: whether it must exist here, or under a server's root, is the caller's
    (see `local_file`)."""
    if wire:
        if not isinstance(source, Mapping):
            raise ValueError('source must be an object: {"kind": "file", "path": ...} or {"kind": "push"}')
        extra = set(source) - set(SOURCE_KEYS)
        if extra:
            raise ValueError(f"unknown source key(s) {sorted(map(str, extra))[:10]}")
        kind = source.get("kind")
        if kind not in WIRE_KINDS:
            raise ValueError(f"source kind must be 'file' or 'push', got {str(kind)[:40]!r}")
        # `realtime` may sit in the source (the protocol) or beside it (lx.session's keyword)
        if "realtime" in source and source["realtime"] != realtime:
            raise ValueError("realtime is given twice, with different values")
        path = source.get("path")
        if kind == "file" and (not isinstance(path, str) or not path):
            raise ValueError("a file source needs a non-empty string path relative to the server root")
    elif isinstance(source, PushSource):
        kind = "push"
    elif isinstance(source, MicSource):
        kind = "mic"
    elif isinstance(source, (str, os.PathLike)):
        kind, path = "file", os.fspath(source)
        if not isinstance(path, str):
            raise ValueError(f"audio file path {path!r} must be str, not bytes")
    else:
        raise ValueError(f"source must be a file path, lx.PushSource() or lx.MicSource(), got {type(source).__name__}")
    if not isinstance(realtime, bool):
        shown = repr(realtime)
        raise ValueError(f"realtime must be True or False, got {shown if len(shown) <= 60 else shown[:57] + '...'}")
    if kind == "push":
        return {"kind": "push"}
    if kind == "mic":
        return {"kind": "mic", "device": source.device}
    return {"kind": "file", "path": path, "realtime": realtime}


def local_file(raw: str) -> str:
    """The absolute path of `raw` if this process can read it as a file."""
    path = Path(raw).expanduser()
    if not path.exists():
        raise ValueError(f"audio file {raw!r} does not exist")
    if not path.is_file():
        raise ValueError(f"audio source {raw!r} is not a file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"audio file {raw!r} is not readable")
    return str(path.resolve())


def describe_source(source: Any, realtime: Any) -> dict[str, Any]:
    """A user's source for a session this process runs: a file must be readable here."""
    src = check_source(source, realtime)
    if src["kind"] == "mic":
        return source.describe()  # needs the optional sounddevice here
    if src["kind"] == "file":
        src["path"] = local_file(src["path"])
    return src
