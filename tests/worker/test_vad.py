"""The energy detector over steady noise: it learns the background within seconds, so a noisy
stream has utterance ends from its first sentence on (it used to take 15-25 s, during which
the whole stream was one utterance)."""

from __future__ import annotations

import numpy as np

from loquilex_nb.core.config import SAMPLE_RATE, build_asr_config
from loquilex_nb.worker.vad import EnergyVad
from tests.helpers import FIXTURES, pcm16

SENTENCES = 7  # speech.wav: 7 sentences, 0.8 s of silence between them


def utterances(audio: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) seconds, ended by `vad_silence` of non-speech, as the recogniser does."""
    cfg = build_asr_config({})
    vad, out, start, last = EnergyVad(cfg.vad_threshold_db), [], None, 0
    for at in range(0, len(audio), 1600):
        for end, speech in vad.frames(audio[at : at + 1600], at):
            if speech:
                start, last = (end if start is None else start), end
            elif start is not None and end - last >= cfg.vad_silence * SAMPLE_RATE:
                out.append((start / SAMPLE_RATE, last / SAMPLE_RATE))
                start = None
    if start is not None:
        out.append((start / SAMPLE_RATE, last / SAMPLE_RATE))
    return out


def with_noise(db: float) -> np.ndarray:
    speech = pcm16(FIXTURES / "speech.wav").astype(np.float32) / 32768  # speech at about -20 dBFS
    noise = np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32) * 10 ** (db / 20)
    return speech + noise


def test_clean_speech_has_one_utterance_per_sentence():
    assert len(utterances(with_noise(-90))) == SENTENCES


def test_steady_noise_is_learned_within_the_first_sentence():
    found = utterances(with_noise(-34))  # 14 dB below the speech, 11 dB above the absolute threshold
    assert found[0][1] < 4.0, f"the first utterance ran to {found[0][1]:.1f} s: the noise was taken for speech"
    assert SENTENCES <= len(found) <= SENTENCES + 2, found


def test_speech_8_db_over_noise_is_not_cut_into_fragments():
    # its quieter frames sit under the margin that starts an utterance: inside one they count
    found = utterances(with_noise(-28))
    assert len(found) == SENTENCES and min(e - s for s, e in found) > 1.0, found
