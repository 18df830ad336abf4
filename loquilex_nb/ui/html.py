"""HTML for the widgets: escaping, number formatting, an inline SVG sparkline, small tables."""

from __future__ import annotations

import html
from typing import Any, Iterable

from ..core.events import EndReason


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    return mib(value) if key == "rss" else str(value)


def fmt_delta(key: str, delta: float | None) -> str:
    if delta is None:
        return ""
    if key == "rss":
        return f"{delta / 2**20:+.1f} MiB"
    return f"{int(delta):+d}"


def sparkline(values: Iterable[float | None], *, baseline: float | None = None, width: int = 120, height: int = 18, color: str = "#3366cc") -> str:
    """A small inline SVG of `values` (None: no sample), with `baseline` as a dashed line."""
    vals = list(values)
    known = [v for v in vals if v is not None]
    if not known:
        return f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"></svg>'
    lo = min(known + ([baseline] if baseline is not None else []))
    hi = max(known + ([baseline] if baseline is not None else []))
    span = (hi - lo) or 1.0
    pad = 2.0

    def y(v: float) -> float:
        return height - pad - (v - lo) / span * (height - 2 * pad)

    step = width / max(len(vals) - 1, 1)
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" style="vertical-align:middle">']
    if baseline is not None:
        yb = y(baseline)
        parts.append(f'<line x1="0" y1="{yb:.1f}" x2="{width}" y2="{yb:.1f}" stroke="#999" stroke-width="1" stroke-dasharray="2,2"/>')
    points = [f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(vals) if v is not None]
    if len(points) == 1:
        x, yy = points[0].split(",")
        parts.append(f'<circle cx="{x}" cy="{yy}" r="1.5" fill="{color}"/>')
    else:
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.3" points="{" ".join(points)}"/>')
    parts.append("</svg>")
    return "".join(parts)


STYLE = (
    "<style>.loquilex-mon{border-collapse:collapse;font-family:monospace;font-size:12px}"
    ".loquilex-mon td,.loquilex-mon th{padding:1px 8px;text-align:right}"
    ".loquilex-mon .l{text-align:left}</style>"
)
TABLE = 'class="loquilex-mon"'


def td(text: str, align: str = "right") -> str:
    return f'<td class="l">{text}</td>' if align == "left" else f"<td>{text}</td>"



def clock(t: float | None) -> str:
    """Seconds as `mm:ss.s`."""
    if t is None:
        return "--:--.-"
    tenths = int(round(max(0.0, float(t)) * 10))
    minutes, rest = divmod(tenths, 600)
    return f"{minutes:02d}:{rest // 10:02d}.{rest % 10}"


def end_text(end: EndReason | dict[str, Any] | None) -> str:
    if end is None:
        return ""
    if isinstance(end, dict):
        kind, code, detail = end.get("kind"), end.get("exit_code"), end.get("detail")
    else:
        kind, code, detail = end.kind, end.exit_code, end.detail
    text = f"{kind}"
    if code is not None:
        text += f" (exit {code})"
    if detail:
        text += f": {detail}"
    return text


STATE_COLORS = {"starting": "#b80", "running": "#080", "stopping": "#b80", "stopped": "#555", "failed": "#b00"}
