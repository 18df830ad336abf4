"""Audio decoding and PCM conversion (16 kHz mono float32 everywhere inside the worker)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from .config import SAMPLE_RATE


class AudioError(Exception):
    """The audio could not be read or decoded; the message says why."""


def iter_file_chunks(path: str, chunk_seconds: float = 0.1) -> Iterator[np.ndarray]:
    """Decode any file PyAV reads, resampled to 16 kHz mono, in fixed-size chunks.

    Streams frame by frame so a long recording never sits in memory whole.
    """
    import av

    chunk = max(1, int(chunk_seconds * SAMPLE_RATE))
    try:
        container = av.open(path, mode="r")
    except Exception as exc:  # PyAV raises many error classes; all mean "unreadable"
        raise AudioError(f"cannot open audio file {path!r}: {exc}") from exc
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
            raise AudioError(f"cannot decode audio file {path!r}: {exc}") from exc
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
