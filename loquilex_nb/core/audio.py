"""Audio decoding and PCM conversion (16 kHz mono float32 everywhere inside the worker)."""

from __future__ import annotations

import os
from typing import Any, Iterator

import numpy as np

from .config import SAMPLE_RATE


class AudioError(Exception):
    """The audio could not be read or decoded; the message says why."""


def _plain(exc: Exception) -> str:
    """FFmpeg's message without the errno PyAV shows (`[Errno 1094995529] Invalid data`)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split("; last error log:")[0]


def probe(fd: int, name: str) -> None:
    """Cheap check, before any process starts, that ``fd`` holds decodable audio: the
    container opens, has an audio stream, and its first audio frame decodes. Leaves the
    file offset at 0 (the worker reads the same open file)."""
    import av

    f = os.fdopen(os.dup(fd), "rb")
    try:
        with av.open(f, mode="r") as container:
            if not container.streams.audio:
                raise AudioError(f"{name!r} has no audio stream")
            for _ in container.decode(container.streams.audio[0]):
                break
            else:
                raise AudioError(f"{name!r} holds no decodable audio")
    except AudioError:
        raise
    except Exception as exc:  # PyAV raises many error classes; all mean "not audio we can read"
        raise AudioError(f"{name!r} is not an audio file we can decode ({_plain(exc)})") from None
    finally:
        f.close()
        os.lseek(fd, 0, os.SEEK_SET)


def iter_file_chunks(source: Any, chunk_seconds: float = 0.1) -> Iterator[np.ndarray]:
    """Decode any file PyAV reads (a path or an open binary file), resampled to 16 kHz mono,
    in fixed-size chunks. Streams frame by frame so a long recording never sits in memory whole.
    """
    import av

    path = source if isinstance(source, str) else getattr(source, "name", "audio")
    chunk = max(1, int(chunk_seconds * SAMPLE_RATE))
    try:
        container = av.open(source, mode="r")
    except Exception as exc:  # PyAV raises many error classes; all mean "unreadable"
        raise AudioError(f"cannot open audio file {path!r}: {_plain(exc)}") from exc
    try:
        if not container.streams.audio:
            raise AudioError(f"{path!r} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        pending = np.zeros(0, dtype=np.float32)
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pending = np.concatenate([pending, out.to_ndarray().reshape(-1)])
                while len(pending) >= chunk:
                    yield pending[:chunk]
                    pending = pending[chunk:]
            for out in resampler.resample(None):
                pending = np.concatenate([pending, out.to_ndarray().reshape(-1)])
        except av.error.FFmpegError as exc:
            raise AudioError(f"cannot decode audio file {path!r}: {_plain(exc)}") from exc
        while len(pending):
            yield pending[:chunk]
            pending = pending[chunk:]
    finally:
        container.close()


def pcm_to_float32(data: bytes, fmt: str) -> np.ndarray:
    if fmt == "s16le":
        if len(data) % 2:
            raise AudioError("int16 PCM must have an even number of bytes")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if fmt == "f32le":
        if len(data) % 4:
            raise AudioError("float32 PCM must have a multiple of 4 bytes")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    raise AudioError(f"unknown PCM format {fmt!r}")


def to_pcm_bytes(chunk: object) -> tuple[bytes, str]:
    """Kernel-side conversion of what users feed: int16 bytes or a NumPy array (16 kHz mono)."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        data = bytes(chunk)
        if len(data) % 2:
            raise ValueError("PCM bytes must be 16-bit little-endian samples (even length)")
        return data, "s16le"
    if isinstance(chunk, np.ndarray):
        if chunk.ndim == 2 and 1 in chunk.shape:
            chunk = chunk.reshape(-1)
        if chunk.ndim != 1:
            raise ValueError(f"PCM arrays must be mono (1-D), got shape {chunk.shape}")
        if chunk.dtype == np.int16:
            return chunk.astype("<i2", copy=False).tobytes(), "s16le"
        if chunk.dtype in (np.float32, np.float64):
            if chunk.size and not np.isfinite(chunk).all():
                raise ValueError("PCM float arrays must not contain NaN or infinity")
            return np.clip(chunk, -1.0, 1.0).astype("<f4").tobytes(), "f32le"
        raise ValueError(f"PCM arrays must be int16 or float32/float64, got dtype {chunk.dtype}")
    raise ValueError(f"feed() takes int16 bytes or a NumPy array, got {type(chunk).__name__}")
