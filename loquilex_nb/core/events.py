"""Event and end-reason records shared by the supervisor, the handles and the server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# asr.revision: a later, better text for an earlier final (same segment_id); never coalesced
EVENT_TYPES = ("status", "asr.partial", "asr.final", "asr.revision", "error", "eos")
# every state a status event can carry; "finished" is the worker's own report, before stopped | failed
STATES = ("starting", "running", "stopping", "finished", "stopped", "failed")


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
    """How a session ended: clean, terminated (SIGTERM), killed (SIGKILL), crashed."""

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
