"""A live resource monitor: counters of this kernel process and of the loquilex server."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import deque
from typing import Any

from ..core.resources import process_counters, worker_figures
from ..supervisor.runtime import RUNTIME
from .html import STYLE, TABLE, esc, fmt, fmt_delta, mib, sparkline, td
from .updater import Stopped, Updater, W

log = logging.getLogger("loquilex_nb")

LEAK_BG = "#f8c8c8"
COUNTERS = ("threads", "tasks", "children", "fds", "sockets", "rss")


def _execution_count() -> int | None:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return None if shell is None else shell.execution_count


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


class ResourceMonitor(Updater, W.VBox):
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
        self._init_updater()
        self.header = W.HTML()
        self.local_html = W.HTML()
        self.server_html = W.HTML()
        super().__init__([self.header, self.local_html, self.server_html])
        self._tick_lock = threading.Lock()
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
        self._start_updater("monitor")
        try:
            # the baseline is taken with the updater running and after a first server request
            # (which may start the loop's resolver thread), so neither counts as growth
            self._sample(baseline=True)
        except BaseException:
            self.close()
            raise

    # -- public ------------------------------------------------------------------------
    @property
    def highlighted(self) -> set[str]:
        """Counters above their baseline for more than `persist` samples ("server.fds" …)."""
        return {k for k, t in list(self._tracks.items()) if t.above > self.persist}

    def refresh(self) -> dict[str, Any]:
        """Take one sample now (including the server's) and redraw; returns `latest`."""
        if not self._closed:
            try:
                self._sample()
            except Stopped:
                pass
        return self.latest

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
    def _draw_closed(self) -> None:
        try:
            self.header.value = self._header_html(closed=True)
        except Exception:
            pass

    def _stopped(self) -> None:
        if self._runtime_held:
            self._runtime_held = False
            RUNTIME.release()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Stopped:
                return
            except Exception as exc:  # a monitor must not die of one bad sample
                log.warning("%s: sample failed: %r", threading.current_thread().name, exc)

    def _fetch_server(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            data = self._on_loop(self.backend.request("GET", "resources", timeout=self.request_timeout), self.request_timeout + 2.0)
        except Stopped:
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
        try:
            return self._on_loop(names(timeout=self.request_timeout), self.request_timeout + 2.0)
        except Stopped:
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
            rows.append(f"<tr{style}>{td(esc(key), 'left')}{td(esc(fmt(key, value)))}{td(esc(fmt_delta(key, delta)))}{td(spark, 'left')}</tr>")
        return f"<table {TABLE}>{''.join(rows)}</table>"

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
                "<tr>" + td(esc(w.get("sid", "?")), "left") + td(esc(w.get("state", "?")), "left")
                + td(esc(self._owner(w.get("owner"))), "left") + td(esc(w.get("pid", "")))
                + td("—" if cpu is None else f"{cpu:.1f}") + td(mib(w["rss"]) if alive and w.get("rss") else "—")
                + td(esc(w.get("fds", "—")) if alive else "—") + "</tr>"
            )
        return f"<table {TABLE}>{''.join(rows)}</table>"

    def _render(self) -> None:
        latest, base = self.latest, self.baseline
        local = latest["process"]
        local_html = (
            STYLE
            + f'<div style="font-size:12px"><b>this kernel</b> (pid {local["pid"]})</div>'
            + self._counter_table("", local, base["process"])
            + '<div style="font-size:12px;margin-top:4px"><b>sessions of this kernel</b></div>'
            + self._worker_table(self._kernel_sessions())
        )
        if self.backend is None:
            server_html = ""
        else:
            url = esc(getattr(self.backend, "url", self.backend))
            error = latest.get("server_error")
            srv = latest.get("server")
            parts = [STYLE, f'<div style="font-size:12px;margin-top:6px"><b>server</b> {url}']
            if srv is not None and error is None:
                parts.append(f" (pid {esc(srv.get('pid'))})</div>")
                parts.append(self._counter_table("server.", srv, base["server"] or {}))
                parts.append('<div style="font-size:12px;margin-top:4px"><b>server sessions</b></div>')
                parts.append(self._worker_table(latest.get("server_sessions") or []))
            else:
                parts.append("</div>")
                text = error or "waiting for the first answer…"
                color = "#b00" if error else "#777"
                parts.append(f'<div style="font-size:12px;color:{color}" class="loquilex-server-error">{esc(text)}</div>')
            server_html = "".join(parts)
        header = self._header_html()
        for widget, value in ((self.header, header), (self.local_html, local_html), (self.server_html, server_html)):
            if widget.value != value:
                widget.value = value
