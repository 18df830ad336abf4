"""Silero VAD (faster-whisper's bundled ONNX) against our energy VAD: utterances found per
condition of the room set (20 utterances in each Harvard file) and CPU per second of audio.

    .venv/bin/python bench/vad_compare.py [AUDIO_DIR]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import REPO  # noqa: E402


def energy_segments(audio: np.ndarray, silence_s: float = 0.45) -> int:
    from loquilex_nb.worker.vad import EnergyVad

    vad = EnergyVad(-45.0)
    n, in_utt, last = 0, False, 0
    for end, speech in vad.frames(audio, 0):
        if speech:
            if not in_utt:
                n, in_utt = n + 1, True
            last = end
        elif in_utt and end - last >= silence_s * 16000:
            in_utt = False
    return n


def silero_segments(audio: np.ndarray) -> int:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    return len(get_speech_timestamps(audio, VadOptions(min_silence_duration_ms=450)))


def main() -> None:
    from faster_whisper.audio import decode_audio

    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "bench-out" / "room-audio"
    out = {}
    for cond in ("clean", "noise17", "noise8", "reverb", "babble8", "music10"):
        audio = decode_audio(str(folder / f"harvard_{cond}.wav"))
        row = {"utterances": 20}
        for name, fn in (("energy", energy_segments), ("silero", silero_segments)):
            t = time.process_time()
            row[name] = fn(audio)
            row[f"{name}_cpu_per_audio_s"] = round((time.process_time() - t) / (len(audio) / 16000), 4)
        out[cond] = row
        print(cond, json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
