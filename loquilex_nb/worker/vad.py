"""Energy voice-activity detection with an adaptive noise floor.

Cheap and deterministic: it only has to find utterance boundaries; Whisper decides what
was said. 30 ms frames; a frame is speech when it is well above both an absolute floor
and the tracked background level.

The background level follows the quiet frames down at once and creeps up slowly, so that
speech does not become "noise"; and it is never below the quietest frame of the last
`QUIET_WINDOW` frames (minimum statistics), which speech always has between its words. Without
that floor a steady noise well above the absolute threshold took 15-25 s to be learned, and
until then the whole stream was one utterance.

An utterance starts on frames `NOISE_MARGIN_DB` above the background; once started, frames
`HOLD_MARGIN_DB` above it go on counting as speech (hysteresis): speech 8-11 dB over steady
noise has quieter syllables under the first margin, and was cut into tenths of a second.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..core.config import SAMPLE_RATE

FRAME = 480  # 30 ms at 16 kHz
NOISE_MARGIN_DB = 12.0
NOISE_RISE_DB_PER_FRAME = 0.02  # the floor creeps up slowly so speech does not become "noise"
START_FRAMES = 2  # a click is not an utterance
HOLD_MARGIN_DB = 6.0  # within HOLD_FRAMES of a speech frame, a frame this far above the background still is one
HOLD_FRAMES = 15
QUIET_WINDOW = 100  # 3 s: longer than any stretch of speech without a quieter frame in it


class EnergyVad:
    def __init__(self, threshold_db: float) -> None:
        self.threshold_db = threshold_db
        self.noise_db = threshold_db - NOISE_MARGIN_DB
        self._rest = np.zeros(0, dtype=np.float32)
        self._run = 0
        self._recent: deque[tuple[int, float]] = deque()  # (frame no, level), levels increasing: the window's minimum first
        self._frame_no = 0
        self._last_loud = -(10**9)

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
            self._note(float(level))
            margin = HOLD_MARGIN_DB if self._frame_no - self._last_loud <= HOLD_FRAMES else NOISE_MARGIN_DB
            loud = level > max(self.threshold_db, self.noise_db + margin)
            if loud:
                self._last_loud = self._frame_no
                self._run += 1
                self.noise_db += NOISE_RISE_DB_PER_FRAME
            else:
                self._run = 0
                self.noise_db = min(self.noise_db + NOISE_RISE_DB_PER_FRAME, max(level, self.noise_db - 1.0))
            out.append((first + (i + 1) * FRAME, self._run >= START_FRAMES))
        return out

    def _note(self, level: float) -> None:
        """Keep the quietest level of the last QUIET_WINDOW frames; the background is not below it."""
        self._frame_no += 1
        while self._recent and self._recent[-1][1] >= level:
            self._recent.pop()
        self._recent.append((self._frame_no, level))
        if self._recent[0][0] <= self._frame_no - QUIET_WINDOW:
            self._recent.popleft()
        if QUIET_WINDOW:
            self.noise_db = max(self.noise_db, self._recent[0][1])


def seconds(samples: int) -> float:
    return samples / SAMPLE_RATE
