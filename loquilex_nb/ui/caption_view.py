"""A live caption view of one session: status, the partial, the finals with their latency."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

from ..core.events import Event, revised
from .html import STATE_COLORS, clock, end_text, esc
from .updater import Stopped, Updater, W

log = logging.getLogger("loquilex_nb")



def _set_unless_cancelled(fut: concurrent.futures.Future) -> None:
    if fut.set_running_or_notify_cancel():  # False: close() cancelled it first
        fut.set_result(None)


class CaptionView(Updater, W.VBox):
    """A session's status, live partial and finals (`[mm:ss.s] text`), with latency.

    At most one updater thread: it follows the session's events until eos (or `close()`),
    woken by each event; a session that already ended is drawn at once from
    `session.finals` / `session.end`, with no thread. A session not started yet is followed
    once it starts. `max_lines` finals are shown (the newest); the box scrolls and stays at
    the bottom.
    """

    def __init__(self, session: Any, *, max_lines: int = 200, height: str = "16em") -> None:
        if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 1:
            raise ValueError(f"max_lines must be a whole number >= 1, got {max_lines!r}")
        self.session = session
        self.max_lines = max_lines
        self.height = height
        self._init_updater()
        self.status_html = W.HTML()
        self.partial_html = W.HTML()
        self.finals_html = W.HTML()
        super().__init__([self.status_html, self.partial_html, self.finals_html])
        self._done = threading.Event()
        self._finals: list[Event] = []
        self._partial: Event | None = None
        self._state: str = session.status
        self._end: Any = session.end
        self._error: dict[str, Any] | None = None
        self._note: str = ""
        if self._end is not None:
            # ended: draw what it left, no thread at all
            self._finals = revised(list(session.finals), getattr(session, "revisions", []))
            self._done.set()
            self._render()
            return
        self._render()
        self._start_updater("captions")

    # -- public ------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def end(self) -> Any:
        return self._end

    @property
    def finals(self) -> list[Event]:
        return list(self._finals)

    @property
    def partial(self) -> Event | None:
        return self._partial

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the view has seen the session's eos (or was closed); False on timeout."""
        return self._done.wait(timeout)

    def __repr__(self) -> str:
        return f"<loquilex CaptionView of {getattr(self.session, 'id', '?')} {self._state}>"

    # -- the updater ---------------------------------------------------------------------
    def _stopped(self) -> None:
        self._done.set()

    def _wait_for_start(self) -> bool:
        """Wait for the session to start; False if it never will (closed first)."""
        s = self.session
        mine: concurrent.futures.Future = concurrent.futures.Future()
        s.settled.add_done_callback(lambda _f: _set_unless_cancelled(mine))
        self._wait_for(mine)
        if s.started:
            return True
        self._note = "closed before it started"
        return False

    def _run(self) -> None:
        try:
            if self._wait_for_start():
                self._follow(self.session.cursor())
        except Stopped:
            pass
        except Exception as exc:
            if not self._stop.is_set():
                log.warning("caption view of %s: %r", getattr(self.session, "id", "?"), exc)
        finally:
            self._settle()
            self._done.set()

    def _follow(self, cursor: Any) -> None:
        """What `Session.events()` does, woken by each event; close() cancels the wait."""
        seen: set[int] = set()
        self._seed(seen)
        while not cursor.done:
            try:
                batch = self._on_loop(cursor.step())
            except (RuntimeError, concurrent.futures.CancelledError):
                return  # the private loop is gone or going: the session was closed
            eos = False
            for ev in batch:
                eos = self._apply(ev, seen) or eos
            if batch:
                self._render()
            if eos:
                return

    def _seed(self, seen: set[int]) -> None:
        # finals that fell out of the event log are still in the session's list
        for ev in self.session.finals:
            seen.add(ev.seq)
            self._finals.append(ev)
        self._finals = revised(self._finals, self.session.revisions)
        if self._finals:
            self._render()

    def _apply(self, ev: Event, seen: set[int]) -> bool:
        data = ev.data or {}
        if ev.type == "status":
            if data.get("state"):
                self._state = data["state"]
            if data.get("end"):
                self._end = data["end"]
        elif ev.type == "asr.partial":
            self._partial = ev
        elif ev.type == "asr.final":
            self._partial = None
            if ev.seq not in seen:
                seen.add(ev.seq)
                self._finals.append(ev)
        elif ev.type == "asr.revision":
            self._finals = revised(self._finals, [ev])  # the better text, in the same place
        elif ev.type == "error":
            self._error = data
        elif ev.type == "eos":
            self._partial = None
            if data.get("end"):
                self._end = data["end"]
            return True
        return False

    def _settle(self) -> None:
        """Final drawing from the handle's own record (end reason, state)."""
        s = self.session
        try:
            end = s.end
            if end is not None:
                self._end = end
                self._state = s.status
                self._partial = None
                if not self._finals:
                    self._finals = revised(list(s.finals), getattr(s, "revisions", []))
            self._render()
        except Exception:
            pass

    # -- drawing ---------------------------------------------------------------------------
    def _latencies(self) -> list[float]:
        out = []
        for ev in self._finals:
            lat = (ev.data or {}).get("latency")
            if isinstance(lat, (int, float)) and not isinstance(lat, bool):
                out.append(float(lat))
        return out

    def _render(self) -> None:
        state = self._state
        color = STATE_COLORS.get(state, "#555")
        sid = esc(getattr(self.session, "id", "?"))
        parts = [f'<span style="color:{color}">●</span> <b>{esc(state)}</b>']
        if self._end is not None:
            parts.append(f" — ended: {esc(end_text(self._end))}")
        elif self._note:
            parts.append(f" — {esc(self._note)}")
        if self._error and (state == "failed" or self._end is None):
            err = self._error
            detail = err.get("detail") or ""
            if not (self._end is not None and detail and detail in end_text(self._end)):
                parts.append(f' · <span style="color:#b00">error {esc(err.get("code", ""))}: {esc(detail)}</span>')
        n = len(self._finals)
        parts.append(f" · {n} final{'' if n == 1 else 's'}")
        lat = self._latencies()
        if lat:
            parts.append(f" · latency {lat[-1]:.2f} s (mean {sum(lat) / len(lat):.2f}, max {max(lat):.2f})")
        status = f'<div style="font-family:sans-serif;font-size:12px">session {sid}: {"".join(parts)}</div>'

        p = self._partial
        partial = (
            f'<div style="font-family:sans-serif;color:#777;font-style:italic;min-height:1.4em">… {esc(p.text or "")}</div>'
            if p is not None and p.text else '<div style="min-height:1.4em"></div>'
        )

        shown = self._finals[-self.max_lines:]
        lines = []
        hidden = len(self._finals) - len(shown)
        if hidden:
            lines.append(f'<div style="color:#999">… {hidden} earlier finals not shown</div>')
        for ev in shown:
            lat_ = (ev.data or {}).get("latency")
            suffix = f' <span style="color:#999;font-size:10px">{lat_:.2f} s</span>' if isinstance(lat_, (int, float)) else ""
            lines.append(f'<div><span style="color:#777;font-family:monospace">[{clock(ev.t0)}]</span> {esc(ev.text or "")}{suffix}</div>')
        # column-reverse keeps the box scrolled to the newest line without any JavaScript
        finals = (
            f'<div style="display:flex;flex-direction:column-reverse;overflow-y:auto;max-height:{esc(self.height)};'
            f'font-family:sans-serif;font-size:13px;border:1px solid #ddd;padding:2px 6px">'
            f'<div class="loquilex-finals">{"".join(lines)}</div></div>'
        )
        for widget, value in ((self.status_html, status), (self.partial_html, partial), (self.finals_html, finals)):
            if widget.value != value:
                widget.value = value
