"""Command line: `loquilex-nb transcribe FILE`, `loquilex-nb lab` and `loquilex-nb sample-path`.

`transcribe` runs one session through the same embedded API a notebook uses, prints each
final caption to stdout as it arrives (with a progress bar on stderr), then the paths of
the caption files. Exit codes: 0 clean end, 1 the session failed, 2 bad input, 130 Ctrl-C.
`lab` starts JupyterLab (the extension is enabled by the package) and, once it answers, prints
its URL with the token as the last thing on the terminal, opening it where there is a screen.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

SAMPLE = Path(__file__).resolve().parent / "data" / "sample.wav"


class _Bar(tqdm):
    # no monitor thread: a CLI run (or a test calling main()) must leave no thread behind
    monitor_interval = 0


def audio_duration(path: str) -> float | None:
    """Seconds of audio according to the container, or None if it does not say."""
    try:
        import av

        with av.open(path) as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.audio[0] if container.streams.audio else None
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # unreadable here means "unknown"; the worker reports the real error
        return None
    return None


def _progress_bar(duration: float | None) -> _Bar:
    if duration is None:  # unknown length: a counter of seconds heard
        return _Bar(total=None, file=sys.stderr, leave=False, bar_format="{n:.1f} s heard [{elapsed}]")
    return _Bar(total=round(duration, 1), file=sys.stderr, leave=False, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s [{elapsed}<{remaining}]")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other error of ours
        print(f"error: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="loquilex-nb", description="Live captions from audio files.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    tr = sub.add_parser("transcribe", help="caption an audio file")
    tr.add_argument("file", help="audio file (anything PyAV/FFmpeg reads)")
    tr.add_argument("--out", metavar="DIR", help="directory for the caption files (default: a new one under ./loquilex-captions)")
    tr.add_argument("--formats", default="vtt,srt,txt", help="comma-separated subset of vtt,srt,txt (default: all)")
    tr.add_argument("--realtime", action="store_true", help="pace the file at real speed, as if it were live")
    tr.add_argument("--model", metavar="DIR", help="CTranslate2 Whisper model directory (default: bundled tiny.en)")
    lab = sub.add_parser("lab", help="start JupyterLab with the extension; print its URL with the token")
    lab.add_argument("--ip", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    lab.add_argument("--port", type=int, default=8888, help="port (default: 8888)")
    lab.add_argument("--root", default=".", help="the server's root_dir (default: the current directory)")
    lab.add_argument("--open", metavar="PATH", default="", help="notebook to open, relative to --root")
    lab.add_argument("--no-browser", action="store_true", help="only print the URL, even where a browser exists")
    sub.add_parser("sample-path", help="print the path of the bundled sample audio")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 clean, 1 the session failed, 2 bad input, 130 Ctrl-C; errors are one `error:` line."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the help, or our one-line error
        return exc.code if isinstance(exc.code, int) else 2
    if args.command == "sample-path":
        print(SAMPLE)
        return 0
    try:
        return lab(args) if args.command == "lab" else transcribe(args)
    except Exception as exc:  # anything unforeseen is still one line, not a traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}"
    return text or type(exc).__name__


def lab(args: argparse.Namespace) -> int:
    import os
    import secrets
    import subprocess
    import time
    import urllib.request

    root = Path(args.root).expanduser().resolve()
    if not root.is_dir():
        raise ValueError(f"--root {args.root!r} is not a directory")
    token = os.environ.get("JUPYTER_TOKEN") or secrets.token_hex(24)
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ip={args.ip}", f"--port={args.port}",
            "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root}", f"--IdentityProvider.token={token}"]
    if args.open:
        argv.append(f"--LabApp.default_url=/lab/tree/{args.open}")
    if os.geteuid() == 0:
        argv.append("--allow-root")  # CI and containers run as root
    host = "127.0.0.1" if args.ip in ("0.0.0.0", "::", "") else args.ip
    url = f"http://{host}:{args.port}/lab" + (f"/tree/{args.open}" if args.open else "") + f"?token={token}"
    proc = subprocess.Popen(argv)
    announced = False
    while True:
        try:
            if not announced:
                deadline = time.monotonic() + 300
                while proc.poll() is None and time.monotonic() < deadline:
                    try:
                        with urllib.request.urlopen(f"http://{host}:{args.port}/api/status?token={token}", timeout=2):
                            break
                    except OSError:
                        time.sleep(0.3)
                announced = True
                if proc.poll() is None:
                    _announce(url, open_browser=not args.no_browser)
            return proc.wait()
        except KeyboardInterrupt:
            # the terminal sent SIGINT to JupyterLab too; it asks to confirm, then shuts down
            continue


def _announce(url: str, *, open_browser: bool) -> None:
    import os

    rule = "=" * min(100, max(40, len(url) + 4))
    print(f"\n{rule}\n  JupyterLab with loquilex is ready. Open this URL in a browser:\n\n  {url}\n\n"
          f"  Ctrl-C twice stops it.\n{rule}\n", file=sys.stderr, flush=True)
    if open_browser and (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or sys.platform == "darwin"):
        import webbrowser

        try:
            webbrowser.open(url)
        except webbrowser.Error:
            pass


def transcribe(args: argparse.Namespace) -> int:
    from . import handle as api

    options: dict = {"realtime": args.realtime, "formats": args.formats}
    if args.out is not None:
        out = Path(args.out).expanduser()
        options["output_root"] = out.parent
        options["out"] = out.name
    if args.model is not None:
        options["model"] = args.model
    try:
        session = api.session(args.file, **options)
    except (ValueError, OSError) as exc:  # bad options, or --out naming a file
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2

    bar = _progress_bar(audio_duration(args.file))
    printed = 0
    try:
        with session as s:
            for ev in s.events():
                if ev.type == "asr.final":
                    printed += 1
                    _Bar.write(ev.text or "", file=sys.stdout)
                    sys.stdout.flush()
                    if ev.t1 is not None:
                        bar.update(max(0.0, min(ev.t1, bar.total or ev.t1) - bar.n))
            end = s.end
            outputs = s.outputs
        if end is not None and end.kind == "clean" and bar.total:
            bar.update(bar.total - bar.n)
    except KeyboardInterrupt:
        bar.close()
        for ev in session.finals[printed:]:  # what the worker finalized while stopping
            print(ev.text or "")
        print("interrupted: session stopped", file=sys.stderr)
        return 130
    finally:
        bar.close()
    if end is None or end.kind != "clean":
        detail = "the session did not end" if end is None else f"{end.kind}: {end.detail}"
        print(f"error: session failed ({detail})", file=sys.stderr)
        return 1
    for kind, path in outputs.items():
        if kind != "partial":
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
