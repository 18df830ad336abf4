"""Energy voice-activity detection with an adaptive noise floor.

Cheap and deterministic: it only has to find utterance boundaries; Whisper decides what
was said. 30 ms frames; a frame is speech when it is well above both an absolute floor
and the tracked background level.
"""

from __future__ import annotations

import numpy as np

from ..core.config import SAMPLE_RATE

FRAME = 480  # 30 ms at 16 kHz
NOISE_MARGIN_DB = 12.0
NOISE_RISE_DB_PER_FRAME = 0.02  # the floor creeps up slowly so speech does not become "noise"
START_FRAMES = 2  # a click is not an utterance


class EnergyVad:
    def __init__(self, threshold_db: float) -> None:
        self.threshold_db = threshold_db
        self.noise_db = threshold_db - NOISE_MARGIN_DB
        self._rest = np.zeros(0, dtype=np.float32)
        self._run = 0

    def frames(self, chunk: np.ndarray, start_sample: int) -> list[tuple[int, bool]]:
        """(end sample of frame, is speech) for every whole frame completed by this chunk."""
        data = np.concatenate([self._rest, chunk]) if len(self._rest) else chunk
        first = start_sample - len(self._rest)
        n = len(data) // FRAME
        self._rest = data[n * FRAME :].copy()
        out = []
        if n == 0:
            return out
        frames = data[: n * FRAME].reshape(n, FRAME).astype(np.float64)
        rms = np.sqrt(np.mean(frames * frames, axis=1)) + 1e-10
        levels = 20.0 * np.log10(rms)
        for i, level in enumerate(levels):
            loud = level > max(self.threshold_db, self.noise_db + NOISE_MARGIN_DB)
            if loud:
                self._run += 1
                self.noise_db += NOISE_RISE_DB_PER_FRAME
            else:
                self._run = 0
                self.noise_db = min(self.noise_db + NOISE_RISE_DB_PER_FRAME, max(level, self.noise_db - 1.0))
            out.append((first + (i + 1) * FRAME, self._run >= START_FRAMES))
        return out


def seconds(samples: int) -> float:
    return samples / SAMPLE_RATE
