"""The JupyterLab extension's microphone path in a real browser (Debian's chromium, fake mic).

Figures: end of an utterance in the WAV → its final rendered in the caption panel's DOM
(p50/p90), next to the same figure through the Python client (section 3's server latency);
PCM frames/s and bytes/s from the browser to the server against the audio rate (32000 B/s).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from measure import REPO, summary, wer

from loquilex_nb.testing.browser import CHROMIUM, batch_text, fake_mic_wav, jupyter_lab, launch_chromium, open_sidebar, wait_for, wait_for_revisions

SPEECH = REPO / "tests" / "fixtures" / "speech.wav"
LEAD_S = 0.75
AUDIO_RATE_BPS = 16000 * 2


def bench_labext(log: Callable[[str], None], wav_src: Path = SPEECH) -> dict[str, Any]:
    if not Path(CHROMIUM).exists():
        return {"error": "chromium is not installed"}
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="lx-bench-labext-") as d:
        tmp = Path(d)
        wav = tmp / "mic.wav"
        audio_s = fake_mic_wav(wav_src, wav, lead=LEAD_S)
        with jupyter_lab(tmp, "--LoquilexApp.browser_lease=5") as lab, sync_playwright() as p:
            browser = launch_chromium(p, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                                      f"--use-file-for-fake-audio-capture={wav}%noloop")
            try:
                page = browser.new_page(viewport={"width": 1300, "height": 850})
                open_sidebar(page, lab)
                page.click("#loquilex-sidebar button.lx-mic", timeout=30_000)
                panel = ".lx-CaptionPanel.lx-mod-mic"
                sid = wait_for(lambda: page.get_attribute(panel, "data-sid"), 30, "a session")
                t0 = time.monotonic()
                wait_for(lambda: time.monotonic() - t0 > audio_s + 3, audio_s + 10, "the file to play")
                stats = page.evaluate(f"Object.assign({{}}, document.querySelector('{panel} .lx-stats').dataset)")
                finals = page.evaluate(f"""[...document.querySelectorAll('{panel} li.lx-final')].map(li => ({{
                    t1: +li.dataset.t1, rendered: +li.dataset.renderedAt, worker: li.dataset.latency === '' ? null : +li.dataset.latency,
                    text: li.querySelector('.lx-text').textContent}}))""")
                elapsed = time.monotonic() - t0
                lease = lab.api("GET", "loquilex/api/browser-sessions")["sessions"][0]
                # the captions as revisions leave them: every final is revised or left within
                # the revision bound of audio after its end (the mic goes on sending silence)
                last_t1 = max((f["t1"] for f in finals), default=0.0)
                wait_for_revisions(t0, last_t1, lag=3.0)
                captions = page.evaluate(f"[...document.querySelectorAll('{panel} li.lx-final .lx-text')].map(e => e.textContent)")
                revised = page.evaluate(f"document.querySelectorAll('{panel} li.lx-final.lx-revised').length")
                page.click(f"{panel} button.lx-btn-stop")
                wait_for(lambda: lab.api("GET", f"loquilex/api/sessions/{sid}")["end"], 30, "the stop")
            finally:
                browser.close()
        batch = wer(wav_src.with_suffix(".txt").read_text(), batch_text(wav, tmp / "batch"))
    start = float(stats["audioStartedAt"])
    block_s = 2048 / float(stats.get("sampleRate") or 44100)  # the first chunk is sent once a block is full
    e2e = [(f["rendered"] - start) / 1000 - (f["t1"] - block_s) for f in finals]
    worker = [f["worker"] for f in finals if f["worker"] is not None]
    reference = wav_src.with_suffix(".txt").read_text()
    wers = {"finals": wer(reference, " ".join(f["text"] for f in finals)), "captions": wer(reference, " ".join(captions)),
            "batch": batch}
    log(f"  labext: {len(finals)} finals, e2e p50 {summary(e2e)['p50']} s; {lease['pcm_frames']} frames / {lease['pcm_bytes']} B in {elapsed:.1f} s; WER {wers}")
    return {
        "file": str(wav_src.relative_to(REPO)),
        "audio_s": round(audio_s, 3),
        "finals": len(finals),
        "texts": [f["text"] for f in finals],
        "captions": captions,
        "revised": revised,
        "wer": {k: round(v, 3) for k, v in wers.items()},
        "e2e_s": {**summary(e2e), "samples": [round(x, 4) for x in e2e]},
        "worker_latency_s": summary(worker),
        "sample_rate": float(stats.get("sampleRate") or 0),
        "browser": {"frames": int(stats["framesSent"]), "bytes": int(stats["bytesSent"])},
        "server": {"frames": lease["pcm_frames"], "bytes": lease["pcm_bytes"], "seconds_of_audio": lease["pcm_seconds"]},
        "capture_s": round(elapsed, 2),
        "frames_per_s": round(lease["pcm_frames"] / elapsed, 2),
        "bytes_per_s": round(lease["pcm_bytes"] / elapsed, 1),
        "bytes_vs_audio_rate": round(lease["pcm_bytes"] / elapsed / AUDIO_RATE_BPS, 3),
    }


def labext_section(r: dict[str, Any]) -> list[str]:
    """The markdown of section 6 (report.py calls this)."""
    x = r.get("labext")
    parts = ["## 6. JupyterLab extension: browser microphone"]
    if not x:
        return parts + ["- not run in this mode."]
    if "error" in x:
        return parts + [f"- failed: {x['error']}"]
    ref = ((r.get("asr") or {}).get("server_latency") or {}).get("e2e_s") or {}

    def ms(v: float | None) -> str:
        return "–" if v is None else f"{v * 1000:.0f} ms"

    rows = [
        "| path | finals | p50 | p90 | min … max |", "|---|---|---|---|---|",
        f"| browser: end of utterance in the WAV → final rendered in the panel | {x['e2e_s']['n']} | {ms(x['e2e_s']['p50'])} | {ms(x['e2e_s']['p90'])} | {ms(x['e2e_s']['min'])} … {ms(x['e2e_s']['max'])} |",
        f"| Python client (section 2, through the server): end of utterance → final received | {ref.get('n', '–')} | {ms(ref.get('p50'))} | {ms(ref.get('p90'))} | {ms(ref.get('min'))} … {ms(ref.get('max'))} |",
        f"| worker `data.latency` of the browser's finals | {x['worker_latency_s']['n']} | {ms(x['worker_latency_s']['p50'])} | {ms(x['worker_latency_s']['p90'])} | |",
    ]
    return parts + [
        "\n".join(rows),
        f"- PCM browser → server: {x['server']['frames']} frames, {x['server']['bytes']} bytes in {x['capture_s']} s of capture = "
        f"**{x['frames_per_s']} frames/s, {x['bytes_per_s']:.0f} B/s = {x['bytes_vs_audio_rate']}× the audio rate** (16 kHz int16 mono = 32000 B/s); "
        f"the browser counted {x['browser']['frames']} frames / {x['browser']['bytes']} bytes sent. Capture context at {x['sample_rate']:.0f} Hz, "
        "one frame per AudioWorklet block of 2048 samples (~46 ms at 44.1 kHz).",
        f"- Setup: JupyterLab started by the bench, Debian's chromium (headless, Playwright), the fake microphone playing "
        f"`{x['file']}` made 44.1 kHz stereo with {LEAD_S} s of lead-in ({x['audio_s']} s), *Caption my microphone* clicked in the "
        "sidebar. Times are the browser's own clock: a final's `renderedAt` (set when its `<li>` is added) − (the first audio "
        "chunk's send time + the final's `t1` − one worklet block); the capture's own buffering before the worklet is not included.",
        f"- finals: {' / '.join(x['texts'])}",
    ] + ([
        f"- WER against the WAV's text: **captions in the panel {x['wer']['captions']:.3f}** ({x['revised']} finals revised; "
        f"read once every final's revision window had passed), the finals as first shown {x['wer']['finals']:.3f}, "
        f"the same file through `lx.session(file, realtime=False)` {x['wer']['batch']:.3f}.",
    ] if "wer" in x else [])
