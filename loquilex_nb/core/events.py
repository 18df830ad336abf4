"""Event and end-reason records shared by the supervisor, the handles and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# asr.revision: a later, better text for an earlier final (same segment_id); never coalesced
EVENT_TYPES = ("status", "asr.partial", "asr.final", "asr.revision", "error", "eos")
# A final's revision, if it ever comes, is decoded once this much audio has followed the final's
# end (the worker's revision constants fit inside it; tests/worker/test_revisions_unit.py holds them to it).
# Clients that wait for settled captions wait this long in audio, plus their own lag.
REVISION_WINDOW_S = 14.0

# Every state a session reports, in the order it moves through them:
#   starting  the worker is spawned and loads the model
#   running   the model is loaded; audio is decoded as it comes
#   stopping  a stop was asked (stop(), DELETE, `stop` message, kernel restart, shutdown)
#   finished  the worker's own report: all the audio it will decode is decoded and the caption
#             files are complete; it exits next. Only a status event carries it (and a kernel's
#             view of a server session, `s.state`): the supervisor's own `state` (embedded
#             `s.state`, the server's `info()["state"]`) goes from running/stopping to the end.
#   stopped   the worker is gone and was reaped; `end` says how (any kind but crashed)
#   failed    the worker crashed, or (server mode) the kernel lost the server
# stopped and failed are final; stopping is skipped when the audio simply runs out.
STATES = ("starting", "running", "stopping", "finished", "stopped", "failed")

# How a session ended (`EndReason.kind`, `s.end.kind`, the `end` of the last status and eos):
END_KINDS = {
    "clean": "the worker finished and exited 0 (audio ran out, or a cooperative stop)",
    "terminated": "the stop grace expired: SIGTERM ended the worker",
    "killed": "the worker ignored stop and SIGTERM: SIGKILL ended it",
    "crashed": "the worker died on its own (a signal, a non-zero exit), reported a fatal error "
    "(e.g. a model it cannot load) or could not start; state failed",
    "disconnected": "server mode only: the kernel lost the server and could not resume within the "
    "reconnect window; the session may still run there; state failed",
}


@dataclass(frozen=True)
class Event:
    type: str
    sid: str
    seq: int
    t_wall: float
    t_mono: float
    segment_id: int | None = None
    text: str | None = None
    t0: float | None = None
    t1: float | None = None
    words: list[dict] | None = None
    data: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "sid": self.sid, "seq": self.seq}
        for name in ("segment_id", "text", "t0", "t1", "words"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["t_wall"] = self.t_wall
        out["t_mono"] = self.t_mono
        if self.data is not None:
            out["data"] = self.data
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Event":
        return cls(
            type=d["type"], sid=d["sid"], seq=int(d["seq"]), t_wall=float(d["t_wall"]),
            t_mono=float(d["t_mono"]), segment_id=d.get("segment_id"), text=d.get("text"),
            t0=d.get("t0"), t1=d.get("t1"), words=d.get("words"), data=d.get("data"),
        )


def revised(finals: list[Event], revisions: list[Event]) -> list[Event]:
    """The finals with the text of their latest revision (same segment_id), in order."""
    import dataclasses

    latest = {r.segment_id: r.text for r in revisions}
    return [dataclasses.replace(f, text=latest[f.segment_id]) if f.segment_id in latest else f for f in finals]


@dataclass(frozen=True)
class EndReason:
    """How a session ended: `kind` is one of END_KINDS (clean, terminated, killed, crashed,
    disconnected); `exit_code` the worker's (None when unknown), `detail` and the last lines of
    its stderr for the reader."""

    kind: str
    exit_code: int | None
    detail: str = ""
    stderr_tail: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "exit_code": self.exit_code,
            "detail": self.detail,
            "stderr_tail": list(self.stderr_tail),
        }
