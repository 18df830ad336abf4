"""The shared vocabulary (loquilex_nb/core) is the one list: every state, status and end kind the code
writes is in it, and the protocol's close codes and the docs agree. Read from the source (an AST walk),
so a new literal anywhere fails here until core/events.py (and the README) name it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from loquilex_nb.core import protocol
from loquilex_nb.core.config import FORMATS, OUTPUT_NAMES, caption_file, output_files
from loquilex_nb.core.events import END_KINDS, STATES
from loquilex_nb.core.sources import check_source

ROOT = Path(__file__).resolve().parents[1]


def _strings(node: ast.AST) -> set[str]:
    """The string literals an expression may evaluate to (not those it only compares with)."""
    if isinstance(node, ast.Constant):
        return {node.value} if isinstance(node.value, str) else set()
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    if isinstance(node, ast.BoolOp):
        return set().union(*(_strings(v) for v in node.values))
    return set()


def written_vocabulary(source: str) -> tuple[set[str], set[str], set[str]]:
    """(session states assigned, states put in status events, EndReason kinds) in `source`."""
    states, statuses, kinds = set(), set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "EndReason" and node.args:
                kinds |= _strings(node.args[0])
            elif name == "_set_state" and node.args:
                states |= _strings(node.args[0])
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "state" and value is not None:
                    statuses |= _strings(value)
        elif isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Attribute) and t.attr == "state" for t in node.targets):
                states |= _strings(node.value)
    return states, statuses, kinds


def test_every_state_and_end_kind_the_code_writes_is_in_core_events():
    states, statuses, kinds = set(), set(), set()
    for path in [*ROOT.glob("loquilex_nb/**/*.py"), *ROOT.glob("jupyter_server_ext/*.py")]:
        if "testing" in path.parts:
            continue  # fault-injecting scripts may say anything
        found = written_vocabulary(path.read_text())
        states |= found[0]
        statuses |= found[1]
        kinds |= found[2]
    assert states | statuses <= set(STATES), (states | statuses) - set(STATES)
    assert kinds <= set(END_KINDS), kinds - set(END_KINDS)
    # each documented word is used somewhere: the lists hold no dead entries
    assert set(STATES) == states | statuses
    assert set(END_KINDS) == kinds


def test_the_checker_sees_a_word_the_lists_lack():
    found = written_vocabulary('s.state = "paused"\nemit("status", data={"state": "idle"})\nEndReason("vanished", None)\n')
    assert found == ({"paused"}, {"idle"}, {"vanished"})


def test_close_codes_in_the_protocol_doc_are_the_table():
    doc = (ROOT / "docs" / "PROTOCOL.md").read_text()
    section = doc[doc.index("Close codes:") :].split("\n\n")[0]
    documented = {int(c) for c in re.findall(r"\b(1\d{3}|4\d{3})\b", section)}
    assert documented == set(protocol.CLOSE_REASONS)
    assert protocol.FINAL_CLOSE <= set(protocol.CLOSE_REASONS)


def test_output_files_follow_the_formats():
    assert output_files(FORMATS) == OUTPUT_NAMES
    assert output_files(["srt"]) == {"partial": "partial.txt", "srt": "captions.srt"}
    assert [caption_file(f) for f in FORMATS] == ["captions.vtt", "captions.srt", "final.txt"]


@pytest.mark.parametrize(
    "source, realtime, message",
    [
        ("x", True, 'source must be an object'),
        ({"kind": "tape"}, True, "source kind must be 'file' or 'push', got 'tape'"),
        ({"kind": "push", "speed": 2}, True, r"unknown source key\(s\) \['speed'\]"),
        ({"kind": "file"}, True, "non-empty string path"),
        ({"kind": "file", "path": "a.wav", "realtime": False}, True, "realtime is given twice"),
        ({"kind": "file", "path": "a.wav"}, "yes", "realtime must be True or False, got 'yes'"),
    ],
)
def test_wire_sources_are_refused_with_the_validator_message(source, realtime, message):
    with pytest.raises(ValueError, match=message):
        check_source(source, realtime, wire=True)


def test_one_validator_gives_one_shape():
    assert check_source({"kind": "file", "path": "a.wav", "realtime": False}, False, wire=True) == {"kind": "file", "path": "a.wav", "realtime": False}
    assert check_source("a.wav", False) == {"kind": "file", "path": "a.wav", "realtime": False}
    assert check_source({"kind": "push"}, True, wire=True) == {"kind": "push"}
    with pytest.raises(ValueError, match="source must be a file path"):
        check_source({"kind": "push"}, True)  # a dict is the protocol's spelling, not lx.session's


@pytest.mark.parametrize("exc, status, client_raises", [
    (protocol.BadRequest("m"), 400, ValueError),
    (protocol.Conflict("m"), 409, ValueError),
    (protocol.SessionEnded("m"), 409, ValueError),
    (protocol.SessionLimitError("m"), 429, protocol.SessionLimitError),
    (RuntimeError("m"), 503, RuntimeError),
])
def test_one_table_maps_server_errors_to_statuses_and_back(exc, status, client_raises):
    assert protocol.http_error(exc)[0] == status
    raised = protocol.error_for_status(status, "m", "POST sessions")
    assert type(raised) is client_raises


def test_errors_the_table_does_not_name_are_bugs_not_answers():
    assert protocol.http_error(ValueError("plain")) is None  # a 500 with a traceback in the log
    assert isinstance(protocol.error_for_status(403, "no", "GET resources"), PermissionError)
