"""A several-minute, many-voice recording for streaming-vs-batch, made at bench time.

`batch_window` (24 s) is longer than every committed fixture, so on those files a
non-realtime stream decodes each file in one window: batch against batch. This file
is far longer than the window. It is generated, not committed (fixtures stay small):
the fixture sentences, spoken by several espeak-ng voices, joined like the fixtures
(see tests/fixtures/make_fixtures.sh), with its reference text next to it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXTS = [REPO / "loquilex_nb" / "data" / "sample.txt", REPO / "tests" / "fixtures" / "speech.txt"]
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-029")
FMT = ["-D", "-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer"]
GAP, LEAD, TAIL = "0.8", "0.5", "1.0"


def make_long(out_dir: Path) -> Path:
    """Write long.wav + long.txt into out_dir (reused when already there) and return the wav."""
    wav, txt = out_dir / "long.wav", out_dir / "long.txt"
    if wav.exists() and txt.exists():
        return wav
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing: `make bench` installs it (apt-get install espeak-ng sox)")
    lines = [ln.strip() for p in TEXTS for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    out_dir.mkdir(parents=True, exist_ok=True)
    spoken: list[str] = []
    with tempfile.TemporaryDirectory(prefix="loquilex-long-") as tmp:
        work = Path(tmp)
        gap = work / "gap.wav"
        subprocess.run(["sox", "-V1", "-n", *FMT, str(gap), "trim", "0", GAP], check=True)
        parts: list[str] = []
        for v, voice in enumerate(VOICES):
            # each voice reads the sentences in a different order: no window repeats another
            order = lines[v % len(lines):] + lines[: v % len(lines)]
            for i, line in enumerate(order):
                raw, utt = work / f"raw{v}_{i}.wav", work / f"utt{v}_{i}.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), "--", line], check=True)
                subprocess.run(["sox", "-V1", str(raw), *FMT, str(utt), "silence", "1", "0.02", "0.1%", "reverse",
                                "silence", "1", "0.02", "0.1%", "reverse"], check=True)
                if parts:
                    parts.append(str(gap))
                parts.append(str(utt))
                spoken.append(line)
        subprocess.run(["sox", "-V1", *parts, *FMT, str(wav), "pad", LEAD, TAIL], check=True)
    txt.write_text("\n".join(spoken) + "\n", encoding="utf-8")
    return wav


if __name__ == "__main__":
    path = make_long(REPO / "bench-out")
    print(path, subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True).stdout.strip(), "s")
