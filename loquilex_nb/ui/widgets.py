"""Notebook widgets: a live resource monitor and a live caption view (ipywidgets, no custom JS).

Both widgets run at most one updater thread of their own (non-daemon, named), woken by a
`threading.Event` to stop; `close()` stops and joins it and leaves the last rendering in the
notebook (`remove()` also closes the widgets), and interpreter exit stops it too (a
`threading._register_atexit` hook that runs before Python joins non-daemon threads, so a
kernel with a widget left open still shuts down). The hook holds the open widgets in a
WeakSet only; nothing happens in `__del__`. Values are set on `ipywidgets.HTML` traits from
the updater thread, which ipykernel >= 6 allows; no `Output` capture is used.
"""

from __future__ import annotations

import concurrent.futures
import html
import itertools
import logging
import threading
import time
import weakref
from collections import deque
from typing import Any, Iterable

try:
    import ipywidgets as W
except ImportError as exc:  # the `lab` extra
    raise ImportError("loquilex_nb.widgets needs ipywidgets: pip install 'loquilex-nb[lab]'") from exc

from ..core.events import EndReason, Event, revised
from ..core.resources import process_counters, worker_figures
from ..supervisor.runtime import RUNTIME

__all__ = ["CaptionView", "ResourceMonitor", "close_all"]

log = logging.getLogger("loquilex_nb")

JOIN_TIMEOUT = 10.0  # close() never waits longer than this for an updater thread
SLICE = 0.1  # how often a blocked updater looks at its stop event
POLL = 0.25  # one wait for new events of a session
LEAK_BG = "#f8c8c8"
COUNTERS = ("threads", "tasks", "children", "fds", "sockets", "rss")
_ids = itertools.count(1)


# -- open widgets, stopped at interpreter exit -------------------------------------------------
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_live_lock = threading.Lock()
_atexit_registered = False


def _track(widget: Any) -> None:
    global _atexit_registered
    with _live_lock:
        _live.add(widget)
        if not _atexit_registered:
            try:
                # runs before the interpreter joins non-daemon threads, unlike atexit
                threading._register_atexit(_stop_all_at_exit)  # type: ignore[attr-defined]
                _atexit_registered = True
            except RuntimeError:
                pass  # the interpreter is already shutting down


def _untrack(widget: Any) -> None:
    with _live_lock:
        _live.discard(widget)


def _stop_all_at_exit() -> None:
    # only the threads: the kernel's channels may be gone, so no comm messages now
    with _live_lock:
        widgets = list(_live)
    for w in widgets:
        try:
            w._stop_updater()
        except Exception as exc:
            log.error("stopping %r at exit failed: %r", w, exc)


def close_all() -> None:
    """Close every loquilex widget of this process whose updater thread still runs."""
    with _live_lock:
        widgets = list(_live)
    for w in widgets:
        w.close()


def _wait(fut: concurrent.futures.Future, stop: threading.Event, timeout: float | None = None) -> Any:
    """The future's result, waited for in short slices; cancelled if `stop` is set first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            return fut.result(timeout=SLICE)
        except concurrent.futures.TimeoutError:
            if fut.done():
                return fut.result()  # finished meanwhile, or its own result is a TimeoutError
            if stop.is_set():
                fut.cancel()
                raise _Stopped() from None
            if deadline is not None and time.monotonic() >= deadline:
                fut.cancel()
                raise TimeoutError("timed out") from None


def _remove(box: Any, parts: Iterable[Any]) -> None:
    box.close()
    for w in parts:
        w.close()
    W.VBox.close(box)


class _Stopped(Exception):
    """The widget was closed while its updater waited."""


def _execution_count() -> int | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.execution_count


# -- formatting ----------------------------------------------------------------------------------
def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    return _mib(value) if key == "rss" else str(value)


def _fmt_delta(key: str, delta: float | None) -> str:
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


_STYLE = (
    "<style>.loquilex-mon{border-collapse:collapse;font-family:monospace;font-size:12px}"
    ".loquilex-mon td,.loquilex-mon th{padding:1px 8px;text-align:right}"
    ".loquilex-mon .l{text-align:left}</style>"
)
_TABLE = 'class="loquilex-mon"'


def _td(text: str, align: str = "right") -> str:
    return f'<td class="l">{text}</td>' if align == "left" else f"<td>{text}</td>"


# -- resource monitor ----------------------------------------------------------------------------
def _resolve_server(server: Any) -> Any:
    """None → no server; "auto" → the server this kernel belongs to (or lx.connect'ed), if any."""
    if server is None:
        return None
    if isinstance(server, str):
        from ..backends import current_backend
        from ..remote.client import RemoteBackend

        return current_backend() if server == "auto" else RemoteBackend(server, None)
    if isinstance(server, (tuple, list)) and len(server) == 2:
        from ..remote.client import RemoteBackend

        url, token = server
        return RemoteBackend(url, token)
    if callable(getattr(server, "request", None)):
        return server  # a RemoteBackend (e.g. lx.connect's return value)
    raise ValueError(f'server must be None, "auto", a URL, (url, token) or a backend, got {server!r}')


def _local_counters() -> dict[str, Any]:
    loop = RUNTIME.loop
    pc = process_counters(loop=loop) if loop is not None else process_counters()
    return {
        "pid": pc.pid,
        "threads": pc.threads,
        # only the private loop's tasks: never the caller's (a kernel's) running loop
        "tasks": pc.tasks if loop is not None else None,
        "children": len(pc.children),
        "fds": pc.fds,
        "sockets": pc.sockets,
        "rss": pc.rss,
    }


def _server_counters(d: dict[str, Any]) -> dict[str, Any]:
    children = d.get("children")
    return {
        "pid": d.get("pid"),
        "threads": d.get("threads"),
        "tasks": d.get("tasks"),
        "children": len(children) if isinstance(children, (list, tuple)) else children,
        "fds": d.get("fds"),
        "sockets": d.get("sockets"),
        "rss": d.get("rss"),
    }


def _local_workers() -> list[dict[str, Any]]:
    sup = RUNTIME.supervisor
    out = []
    for s in sup.list() if sup is not None else []:
        pid = s.pid
        if pid is not None:
            out.append({"sid": s.id, "state": s.state, "owner": s.owner, **worker_figures(pid).as_dict()})
    return out


class _Track:
    """History and persistent-growth state of one counter."""

    def __init__(self, history: int) -> None:
        self.values: deque[float | None] = deque(maxlen=history)
        self.above = 0  # consecutive samples above baseline + slack

    def push(self, value: float | None, base: float | None, slack: float) -> None:
        self.values.append(value)
        if value is not None and (value - (base or 0)) > slack:
            self.above += 1
        else:
            self.above = 0


class ResourceMonitor(W.VBox):
    """Live counters of this kernel process and, if connected, of the loquilex server.

    `server`: None (this process only), "auto" (the server this kernel belongs to or
    `lx.connect`ed, if any), `(url, token)`, a URL, or a backend. Deltas are against a
    baseline taken at creation (the server's: at its first answer). A counter that stays above
    its baseline for more than `persist` consecutive samples is highlighted (RSS: by more
    than `rss_slack` bytes). `refresh()` samples once, synchronously; `close()` stops and
    joins the updater thread and closes the widget (idempotent).
    """

    def __init__(
        self,
        interval: float = 1.0,
        server: Any = None,
        history: int = 60,
        *,
        persist: int = 5,
        rss_slack: int = 64 * 2**20,
        request_timeout: float = 5.0,
    ) -> None:
        if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
            raise ValueError(f"interval must be a number of seconds > 0, got {interval!r}")
        if isinstance(history, bool) or not isinstance(history, int) or history < 2:
            raise ValueError(f"history must be a whole number >= 2, got {history!r}")
        if isinstance(persist, bool) or not isinstance(persist, int) or persist < 1:
            raise ValueError(f"persist must be a whole number >= 1, got {persist!r}")
        backend = _resolve_server(server)
        self.interval = float(interval)
        self.history = history
        self.persist = persist
        self.rss_slack = rss_slack
        self.request_timeout = float(request_timeout)
        self.backend = backend
        self.n = next(_ids)
        self.header = W.HTML()
        self.local_html = W.HTML()
        self.server_html = W.HTML()
        super().__init__([self.header, self.local_html, self.server_html])
        self._stop = threading.Event()
        self._tick_lock = threading.Lock()
        self._close_lock = threading.Lock()
        self._closed = False
        self._runtime_held = False
        self._tracks: dict[str, _Track] = {}
        self.samples = 0
        self._shown_in: int | None = None  # set by `%lx monitor`: the cell that displayed it
        self._owner_names: dict[str, str] = {}  # kernel id -> notebook name, from the server
        self.latest: dict[str, Any] = {}
        self.baseline: dict[str, Any] = {"process": None, "server": None}
        if backend is not None:
            # server requests run on the private loop: keep it up while this monitor lives
            RUNTIME.acquire()
            self._runtime_held = True
        self._thread = threading.Thread(target=self._run, name=f"loquilex-monitor-{self.n}")
        _track(self)
        try:
            self._thread.start()
            # the baseline is taken with the updater running and after a first server request
            # (which may start the loop's resolver thread), so neither counts as growth
            self._sample(baseline=True)
        except BaseException:
            self.close()
            raise

    # -- public ------------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread:
        return self._thread

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def highlighted(self) -> set[str]:
        """Counters above their baseline for more than `persist` samples ("server.fds" …)."""
        return {k for k, t in list(self._tracks.items()) if t.above > self.persist}

    def refresh(self) -> dict[str, Any]:
        """Take one sample now (including the server's) and redraw; returns `latest`."""
        if not self._closed:
            try:
                self._sample()
            except _Stopped:
                pass
        return self.latest

    def close(self) -> None:
        """Stop and join the updater thread; the last rendering stays (idempotent, bounded).

        The notebook keeps showing what the monitor saw last, marked closed; `remove()`
        also closes the widgets, and the view disappears.
        """
        if "_stop" not in self.__dict__:  # __init__ failed early (ipywidgets' __del__ calls close)
            return super().close()
        self._stop_updater()
        try:
            self.header.value = self._header_html(closed=True)
        except Exception:
            pass

    def remove(self) -> None:
        """close(), then close the widgets themselves: the view leaves the notebook."""
        _remove(self, (self.header, self.local_html, self.server_html))

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        if self._shown_in is not None and self._shown_in == _execution_count():
            # `%lx monitor` displayed it in this very cell and returns it: as the cell's result
            # it shows as text, not as a second live view
            return None
        return super()._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"every {self.interval:g} s"
        server = "" if self.backend is None else f" server={getattr(self.backend, 'url', self.backend)}"
        return f"<loquilex ResourceMonitor {self.n} {state}{server}>"

    # -- the updater ---------------------------------------------------------------------
    def _stop_updater(self) -> None:
        with self._close_lock:
            first = not self._closed
            self._closed = True
        self._stop.set()
        t = self._thread
        if t is not threading.current_thread() and t.ident is not None:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                log.error("%s did not stop within %.0f s", t.name, JOIN_TIMEOUT)
        if first:
            _untrack(self)
            if self._runtime_held:
                self._runtime_held = False
                RUNTIME.release()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except _Stopped:
                return
            except Exception as exc:  # a monitor must not die of one bad sample
                log.warning("%s: sample failed: %r", threading.current_thread().name, exc)

    def _fetch_server(self) -> tuple[dict[str, Any] | None, str | None]:
        coro = self.backend.request("GET", "resources", timeout=self.request_timeout)
        try:
            fut = RUNTIME.submit(coro)
        except Exception as exc:
            coro.close()
            return None, f"server error: {exc}"
        try:
            data = _wait(fut, self._stop, self.request_timeout + 2.0)
        except _Stopped:
            raise
        except PermissionError as exc:
            return None, f"server refused: {exc}"
        except (ConnectionError, TimeoutError, OSError) as exc:
            return None, f"server unreachable: {exc}"
        except concurrent.futures.CancelledError:
            return None, "server unreachable: request cancelled (the loquilex loop stopped)"
        except Exception as exc:
            return None, f"server error: {exc}"
        if not isinstance(data, dict) or not isinstance(data.get("server"), dict):
            return None, f"server error: unexpected answer {str(data)[:200]!r}"
        owners = {w.get("owner") for w in data.get("sessions") or ()} - {None, ""}
        if owners - self._owner_names.keys():
            self._owner_names.update(self._fetch_notebook_names())
        return data, None

    def _fetch_notebook_names(self) -> dict[str, str]:
        """kernel id -> notebook name; {} when the server does not say (no Jupyter sessions API)."""
        names = getattr(self.backend, "notebook_names", None)
        if names is None:
            return {}
        coro = names(timeout=self.request_timeout)
        try:
            fut = RUNTIME.submit(coro)
        except Exception:
            coro.close()
            return {}
        try:
            return _wait(fut, self._stop, self.request_timeout + 2.0)
        except _Stopped:
            raise
        except Exception:
            return {}

    def _sample(self, *, baseline: bool = False) -> None:
        with self._tick_lock:
            if self._closed and not baseline:
                return
            srv_data, srv_error = (None, None)
            if self.backend is not None:
                srv_data, srv_error = self._fetch_server()
            local = _local_counters()
            workers = _local_workers()
            base = self.baseline
            if baseline or base["process"] is None:
                base = {**base, "process": dict(local)}
            srv = None
            if srv_data is not None:
                srv = _server_counters(srv_data["server"])
                if base["server"] is None:  # the server's baseline: its first answer
                    base = {**base, "server": dict(srv)}
            self.baseline = base
            for key in COUNTERS:
                self._push(key, local[key], base["process"][key])
                if srv is not None:
                    self._push("server." + key, srv[key], base["server"][key])
                elif "server." + key in self._tracks:  # no answer: a gap, and no stale highlight
                    self._tracks["server." + key].push(None, None, 0)
            self.samples += 1
            self.latest = {
                "t": time.time(),
                "process": local,
                "workers": workers,
                "server": srv,
                "server_sessions": list(srv_data.get("sessions") or []) if srv_data is not None else [],
                "server_error": srv_error,
            }
            self._render()

    def _push(self, key: str, value: Any, base: Any) -> None:
        track = self._tracks.get(key)
        if track is None:
            track = self._tracks[key] = _Track(self.history)
        name = key.split(".")[-1]
        slack = self.rss_slack if name == "rss" else 0
        if name == "tasks":  # no private loop = no tasks
            value = 0 if value is None else value
            base = 0 if base is None else base
        track.push(value, base, slack)

    # -- drawing ---------------------------------------------------------------------------
    def _header_html(self, closed: bool = False) -> str:
        state = "closed" if closed else f"every {self.interval:g} s · {self.samples} samples"
        return (
            f'<div style="font-family:sans-serif;font-size:12px"><b>loquilex resources</b> · {state}'
            f' · <span style="background:{LEAK_BG};padding:0 4px">red</span>: above baseline for more than {self.persist} samples</div>'
        )

    def _counter_table(self, prefix: str, now: dict[str, Any], base: dict[str, Any]) -> str:
        rows = ['<tr><th class="l">counter</th><th>now</th><th>Δ baseline</th><th class="l">history</th></tr>']
        for key in COUNTERS:
            tkey = prefix + key
            track = self._tracks.get(tkey)
            leak = track is not None and track.above > self.persist
            value = now.get(key)
            b = base.get(key)
            delta = None
            if key == "tasks":
                delta = (value or 0) - (b or 0) if value is not None or b is not None else None
            elif value is not None and b is not None:
                delta = value - b
            style = f' style="background:{LEAK_BG}" data-leak="1" title="above baseline for {track.above} samples"' if leak else ""
            spark = sparkline(track.values if track else [], baseline=b if key != "tasks" else (b or 0), color="#c0392b" if leak else "#3366cc")
            rows.append(f"<tr{style}>{_td(_esc(key), 'left')}{_td(_esc(_fmt(key, value)))}{_td(_esc(_fmt_delta(key, delta)))}{_td(spark, 'left')}</tr>")
        return f"<table {_TABLE}>{''.join(rows)}</table>"

    def _owner(self, owner: Any) -> str:
        if not owner:
            return ""
        name = self._owner_names.get(owner)
        if name:
            return name
        return f"kernel {owner[:8]}…" if len(owner) > 12 else str(owner)

    def _kernel_sessions(self) -> list[dict[str, Any]]:
        """This process's own workers and, in server mode, the server's sessions this kernel owns."""
        latest = self.latest
        kernel = getattr(self.backend, "kernel_id", None)
        remote = [w for w in latest.get("server_sessions") or () if kernel is not None and w.get("owner") == kernel]
        return list(latest["workers"]) + remote

    def _worker_table(self, workers: list[dict[str, Any]]) -> str:
        if not workers:
            return '<div style="font-size:12px;color:#777">no sessions running</div>'
        rows = ['<tr><th class="l">session</th><th class="l">state</th><th class="l">owner</th><th>pid</th>'
                "<th>CPU %</th><th>RSS</th><th>fds</th></tr>"]
        for w in workers:
            cpu = w.get("cpu_percent")
            alive = w.get("alive", True)
            rows.append(
                "<tr>" + _td(_esc(w.get("sid", "?")), "left") + _td(_esc(w.get("state", "?")), "left")
                + _td(_esc(self._owner(w.get("owner"))), "left") + _td(_esc(w.get("pid", "")))
                + _td("—" if cpu is None else f"{cpu:.1f}") + _td(_mib(w["rss"]) if alive and w.get("rss") else "—")
                + _td(_esc(w.get("fds", "—")) if alive else "—") + "</tr>"
            )
        return f"<table {_TABLE}>{''.join(rows)}</table>"

    def _render(self) -> None:
        latest, base = self.latest, self.baseline
        local = latest["process"]
        local_html = (
            _STYLE
            + f'<div style="font-size:12px"><b>this kernel</b> (pid {local["pid"]})</div>'
            + self._counter_table("", local, base["process"])
            + f'<div style="font-size:12px;margin-top:4px"><b>sessions of this kernel</b></div>'
            + self._worker_table(self._kernel_sessions())
        )
        if self.backend is None:
            server_html = ""
        else:
            url = _esc(getattr(self.backend, "url", self.backend))
            error = latest.get("server_error")
            srv = latest.get("server")
            parts = [_STYLE, f'<div style="font-size:12px;margin-top:6px"><b>server</b> {url}']
            if srv is not None and error is None:
                parts.append(f" (pid {_esc(srv.get('pid'))})</div>")
                parts.append(self._counter_table("server.", srv, base["server"] or {}))
                parts.append('<div style="font-size:12px;margin-top:4px"><b>server sessions</b></div>')
                parts.append(self._worker_table(latest.get("server_sessions") or []))
            else:
                parts.append("</div>")
                text = error or "waiting for the first answer…"
                color = "#b00" if error else "#777"
                parts.append(f'<div style="font-size:12px;color:{color}" class="loquilex-server-error">{_esc(text)}</div>')
            server_html = "".join(parts)
        header = self._header_html()
        for widget, value in ((self.header, header), (self.local_html, local_html), (self.server_html, server_html)):
            if widget.value != value:
                widget.value = value


# -- caption view ----------------------------------------------------------------------------------
def _clock(t: float | None) -> str:
    """Seconds as `mm:ss.s`."""
    if t is None:
        return "--:--.-"
    tenths = int(round(max(0.0, float(t)) * 10))
    minutes, rest = divmod(tenths, 600)
    return f"{minutes:02d}:{rest // 10:02d}.{rest % 10}"


def _end_text(end: EndReason | dict[str, Any] | None) -> str:
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


_STATE_COLORS = {"starting": "#b80", "running": "#080", "stopping": "#b80", "stopped": "#555", "failed": "#b00"}


class CaptionView(W.VBox):
    """A session's status, live partial and finals (`[mm:ss.s] text`), with latency.

    One updater thread follows the session's events until eos (or `close()`); a session
    that already ended is drawn at once from `session.finals` / `session.end`, with no thread.
    A session not started yet is followed once it starts. `max_lines` finals are shown
    (the newest); the box scrolls and stays at the bottom.
    """

    def __init__(self, session: Any, *, max_lines: int = 200, height: str = "16em") -> None:
        if isinstance(max_lines, bool) or not isinstance(max_lines, int) or max_lines < 1:
            raise ValueError(f"max_lines must be a whole number >= 1, got {max_lines!r}")
        self.session = session
        self.max_lines = max_lines
        self.height = height
        self.n = next(_ids)
        self.status_html = W.HTML()
        self.partial_html = W.HTML()
        self.finals_html = W.HTML()
        super().__init__([self.status_html, self.partial_html, self.finals_html])
        self._stop = threading.Event()
        self._done = threading.Event()
        self._close_lock = threading.Lock()
        self._closed = False
        self._finals: list[Event] = []
        self._partial: Event | None = None
        self._state: str = session.status
        self._end: Any = session.end
        self._error: dict[str, Any] | None = None
        self._note: str = ""
        self._thread: threading.Thread | None = None
        if self._end is not None:
            # ended: draw what it left, no thread at all
            self._finals = revised(list(session.finals), getattr(session, "revisions", []))
            self._done.set()
            self._render()
            return
        self._render()
        self._thread = threading.Thread(target=self._run, name=f"loquilex-captions-{self.n}")
        _track(self)
        try:
            self._thread.start()
        except BaseException:
            self.close()
            raise

    # -- public ------------------------------------------------------------------------
    @property
    def thread(self) -> threading.Thread | None:
        return self._thread

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

    def close(self) -> None:
        """Stop and join the updater thread (promptly); the captions shown so far stay. Idempotent."""
        if "_stop" not in self.__dict__:  # __init__ failed early (ipywidgets' __del__ calls close)
            return super().close()
        self._stop_updater()

    def remove(self) -> None:
        """close(), then close the widgets themselves: the view leaves the notebook."""
        _remove(self, (self.status_html, self.partial_html, self.finals_html))

    def __repr__(self) -> str:
        return f"<loquilex CaptionView of {getattr(self.session, 'id', '?')} {self._state}>"

    # -- the updater ---------------------------------------------------------------------
    def _stop_updater(self) -> None:
        with self._close_lock:
            first = not self._closed
            self._closed = True
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread() and t.ident is not None:
            t.join(JOIN_TIMEOUT)
            if t.is_alive():
                log.error("%s did not stop within %.0f s", t.name, JOIN_TIMEOUT)
        if first:
            _untrack(self)
        self._done.set()

    def _core(self) -> Any:
        """The running session behind the handle, once it has started; None if it never will."""
        s = self.session
        while not self._stop.is_set():
            core = getattr(s, "_core", None)
            if core is not None:
                return core
            if getattr(s, "_closed", False):
                self._note = "closed before it started"
                return None
            self._stop.wait(SLICE)
        return None

    def _run(self) -> None:
        try:
            core = self._core()
            if core is not None and callable(getattr(core, "next_events", None)):
                self._follow(core)
            elif core is not None:
                self._follow_iterator()
        except _Stopped:
            pass
        except Exception as exc:
            if not self._stop.is_set():
                log.warning("caption view of %s: %r", getattr(self.session, "id", "?"), exc)
        finally:
            self._settle()
            self._done.set()

    def _follow(self, core: Any) -> None:
        """What `Session.events()` does, with a look at the stop event after every poll."""
        seq = 0
        seen = set()
        self._seed(core, seen)
        while not self._stop.is_set():
            coro = core.next_events(seq, POLL)
            try:
                fut = RUNTIME.submit(coro)
            except RuntimeError:
                coro.close()
                return  # the private loop is gone: the session was closed
            try:
                batch, _gap = _wait(fut, self._stop)
            except concurrent.futures.CancelledError:
                return
            eos = False
            for ev in batch:
                seq = ev.seq
                eos = self._apply(ev, seen) or eos
            if batch:
                self._render()
            if eos or (not batch and not core.alive and seq >= core.seq):
                return

    def _follow_iterator(self) -> None:
        """A backend without `next_events`: the public iterator, stop checked between events."""
        seen: set[int] = set()
        for ev in self.session.events():
            if self._stop.is_set():
                return
            eos = self._apply(ev, seen)
            self._render()
            if eos:
                return

    def _seed(self, core: Any, seen: set[int]) -> None:
        # finals that fell out of the event log are still in the session's list
        for ev in list(getattr(core, "finals", ())):
            seen.add(ev.seq)
            self._finals.append(ev)
        self._finals = revised(self._finals, list(getattr(core, "revisions", ())))
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
        color = _STATE_COLORS.get(state, "#555")
        sid = _esc(getattr(self.session, "id", "?"))
        parts = [f'<span style="color:{color}">●</span> <b>{_esc(state)}</b>']
        if self._end is not None:
            parts.append(f" — ended: {_esc(_end_text(self._end))}")
        elif self._note:
            parts.append(f" — {_esc(self._note)}")
        if self._error and (state == "failed" or self._end is None):
            err = self._error
            detail = err.get("detail") or ""
            if not (self._end is not None and detail and detail in _end_text(self._end)):
                parts.append(f' · <span style="color:#b00">error {_esc(err.get("code", ""))}: {_esc(detail)}</span>')
        n = len(self._finals)
        parts.append(f" · {n} final{'' if n == 1 else 's'}")
        lat = self._latencies()
        if lat:
            parts.append(f" · latency {lat[-1]:.2f} s (mean {sum(lat) / len(lat):.2f}, max {max(lat):.2f})")
        status = f'<div style="font-family:sans-serif;font-size:12px">session {sid}: {"".join(parts)}</div>'

        p = self._partial
        partial = (
            f'<div style="font-family:sans-serif;color:#777;font-style:italic;min-height:1.4em">… {_esc(p.text or "")}</div>'
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
            lines.append(f'<div><span style="color:#777;font-family:monospace">[{_clock(ev.t0)}]</span> {_esc(ev.text or "")}{suffix}</div>')
        # column-reverse keeps the box scrolled to the newest line without any JavaScript
        finals = (
            f'<div style="display:flex;flex-direction:column-reverse;overflow-y:auto;max-height:{_esc(self.height)};'
            f'font-family:sans-serif;font-size:13px;border:1px solid #ddd;padding:2px 6px">'
            f'<div class="loquilex-finals">{"".join(lines)}</div></div>'
        )
        for widget, value in ((self.status_html, status), (self.partial_html, partial), (self.finals_html, finals)):
            if widget.value != value:
                widget.value = value
