"""The `%lx` line magic: `%load_ext loquilex_nb` (or `loquilex_nb.magics`), then

    %lx sessions            running sessions: id, state, owner, pid
    %lx stop <id>|all       stop one session (an id or a unique prefix of one), or all of them
    %lx resources           a compact print of lx.resources()
    %lx monitor [interval]  display a live ResourceMonitor (server: "auto") and return it

Mistakes (an unknown subcommand, an unknown id, an unreachable server) give one line, never a
traceback.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

from .. import handle as api
from ..supervisor.runtime import RUNTIME

USAGE = "%lx sessions | %lx stop <id>|all | %lx resources | %lx monitor [interval]"
RUNNING = ("starting", "running", "stopping")


def _mib(n: Any) -> str:
    return "—" if not isinstance(n, (int, float)) else f"{n / 2**20:.1f} MiB"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def format_sessions(sessions: list[dict[str, Any]]) -> str:
    if not sessions:
        return "no running sessions"
    rows = [[s.get("id", "?"), s.get("state", "?"), s.get("owner") or "-", str(s.get("pid") or "-")] for s in sessions]
    return _table(rows, ["id", "state", "owner", "pid"])


def format_resources(res: dict[str, Any]) -> str:
    def counters(name: str, d: dict[str, Any]) -> str:
        children = d.get("children")
        n_children = len(children) if isinstance(children, (list, tuple)) else children
        tasks = "—" if d.get("tasks") is None else d["tasks"]
        return (
            f"{name} pid {d.get('pid')}: threads {d.get('threads')} · tasks {tasks} · children {n_children}"
            f" · fds {d.get('fds')} · sockets {d.get('sockets')} · rss {_mib(d.get('rss'))}"
        )

    lines = [counters("kernel", res.get("process") or {})]
    if res.get("server"):
        lines.append(counters("server", res["server"]))
    for w in res.get("sessions") or []:
        cpu = w.get("cpu_percent")
        cpu_s = "—" if cpu is None else f"{cpu:.1f}%"
        if w.get("alive", True):
            figures = f"cpu {cpu_s} · rss {_mib(w.get('rss'))} · fds {w.get('fds')}"
        else:
            figures = "exited"
        owner = f" owner {w['owner']}" if w.get("owner") else ""
        lines.append(f"  session {w.get('sid')} {w.get('state', '?')}{owner} pid {w.get('pid')}: {figures}")
    if not res.get("sessions"):
        lines.append("  no sessions running")
    return "\n".join(lines)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


@magics_class
class LoquilexMagics(Magics):
    """`%lx …`: see the module docstring."""

    @line_magic
    def lx(self, line: str = "") -> Any:
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"%lx: {exc}; usage: {USAGE}") from None
        if not args or args[0] in ("help", "-h", "--help"):
            print(f"usage: {USAGE}")
            return None
        sub, rest = args[0], args[1:]
        handler = {
            "sessions": self._sessions,
            "stop": self._stop,
            "resources": self._resources,
            "monitor": self._monitor,
        }.get(sub)
        if handler is None:
            raise UsageError(f"unknown %lx subcommand {sub!r}; usage: {USAGE}")
        try:
            return handler(rest)
        except UsageError:
            raise
        except Exception as exc:  # one line, no traceback
            _err(f"%lx {sub}: {type(exc).__name__}: {exc}")
            return None

    # -- subcommands -------------------------------------------------------------------
    def _sessions(self, rest: list[str]) -> None:
        if rest:
            raise UsageError(f"%lx sessions takes no arguments; usage: {USAGE}")
        print(format_sessions(api.sessions()))

    def _stop(self, rest: list[str]) -> None:
        if len(rest) != 1:
            raise UsageError(f"%lx stop needs one session id, or 'all'; usage: {USAGE}")
        target = rest[0]
        if target == "all":
            before = {s["id"] for s in api.sessions()}
            api.stop_all()
            left = {s["id"] for s in api.sessions()}
            stopped = sorted(before - left)
            print(f"stopped {len(stopped)} session(s)" + (f": {', '.join(stopped)}" if stopped else ""))
            return
        running = [s for s in api.sessions() if s.get("state") in RUNNING]
        matches = [s for s in running if s["id"] == target] or [s for s in running if s["id"].startswith(target)]
        if not matches:
            _err(f"%lx stop: no running session {target!r} (see %lx sessions)")
            return
        if len(matches) > 1:
            _err(f"%lx stop: {target!r} matches {len(matches)} sessions ({', '.join(s['id'] for s in matches)}); give more of the id")
            return
        sid = matches[0]["id"]
        if api._server_mode():
            info = api.server_request("DELETE", f"sessions/{sid}")
            end = (info or {}).get("end") if isinstance(info, dict) else None
        else:
            if RUNTIME.supervisor is None:
                _err(f"%lx stop: no running session {target!r} (see %lx sessions)")
                return
            reason = RUNTIME.call(lambda sup: sup.stop(sid))
            end = reason.as_dict() if reason is not None else None
        kind = f" ({end.get('kind')})" if isinstance(end, dict) and end.get("kind") else ""
        print(f"stopped {sid}{kind}")

    def _resources(self, rest: list[str]) -> None:
        if rest:
            raise UsageError(f"%lx resources takes no arguments; usage: {USAGE}")
        print(format_resources(api.resources()))

    def _monitor(self, rest: list[str]) -> Any:
        if len(rest) > 1:
            raise UsageError(f"%lx monitor takes at most an interval in seconds; usage: {USAGE}")
        interval = 1.0
        if rest:
            try:
                interval = float(rest[0])
            except ValueError:
                raise UsageError(f"%lx monitor: interval must be a number of seconds, got {rest[0]!r}") from None
            if not interval > 0:
                raise UsageError(f"%lx monitor: interval must be > 0, got {rest[0]!r}")
        from IPython.display import display

        from .widgets import ResourceMonitor

        monitor = ResourceMonitor(interval=interval, server="auto")
        display(monitor)
        # returned for `m = %lx monitor`; as a cell's last line it is not shown a second time
        monitor._shown_in = self.shell.execution_count if self.shell is not None else None
        return monitor


def load_ipython_extension(ipython: Any) -> None:
    # IPython ships a default shell alias `lx` (ls … | grep ^-..x): drop it first, or every
    # `%reset` and the shell's exit would log "Invalid alias: The name lx can't be aliased"
    am = getattr(ipython, "alias_manager", None)
    if am is not None:
        removed = [a for a in (*am.default_aliases, *am.user_aliases) if a[0] == "lx"]
        if removed:
            am.default_aliases = [a for a in am.default_aliases if a[0] != "lx"]
            am.user_aliases = [a for a in am.user_aliases if a[0] != "lx"]
            ipython._loquilex_lx_aliases = removed
        if am.is_alias("lx"):
            am.undefine_alias("lx")
    ipython.register_magics(LoquilexMagics)


def unload_ipython_extension(ipython: Any) -> None:
    # IPython has no unregister for class magics: drop ours by name, give the alias back
    ipython.magics_manager.magics.get("line", {}).pop("lx", None)
    am = getattr(ipython, "alias_manager", None)
    removed = getattr(ipython, "_loquilex_lx_aliases", [])
    if am is not None and removed:
        am.default_aliases = [*am.default_aliases, *removed[:1]]
        am.soft_define_alias(*removed[0])
        del ipython._loquilex_lx_aliases
