"""The `%lx` line magic in a real IPython InteractiveShell, with real sessions (embedded mode)."""

import threading

import pytest

pytest.importorskip("IPython")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402
from traitlets.config import Config  # noqa: E402

import loquilex_nb as lx  # noqa: E402


@pytest.fixture
def shell(monkeypatch):
    monkeypatch.setenv("LOQUILEX_MODE", "embedded")
    config = Config()
    config.HistoryManager.hist_file = ":memory:"  # no history database, no saving thread
    sh = InteractiveShell.instance(config=config)
    try:
        result = sh.run_cell("%load_ext loquilex_nb.ui.magics")
        assert result.success, result.error_in_exec
        yield sh
    finally:
        InteractiveShell.clear_instance()


def run(shell, capsys, line):
    capsys.readouterr()
    result = shell.run_cell(line)
    out, err = capsys.readouterr()
    return result, out, err


def one_clear_line(text):
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def test_sessions_and_stop(shell, capsys, tmp_path):
    _, out, _ = run(shell, capsys, "%lx sessions")
    assert "no running sessions" in out
    with lx.session(lx.PushSource(), output_root=tmp_path, owner="me") as a, lx.session(lx.PushSource(), output_root=tmp_path) as b:
        result, out, err = run(shell, capsys, "%lx sessions")
        assert result.success and not err
        header, *rows = out.strip().splitlines()
        assert header.split() == ["id", "state", "owner", "pid"]
        assert {r.split()[0] for r in rows} == {a.id, b.id}
        row_a = next(r.split() for r in rows if r.startswith(a.id))
        assert row_a[1] in ("starting", "running") and row_a[2] == "me" and row_a[3] == str(a.pid)

        result, out, err = run(shell, capsys, f"%lx stop {a.id}")
        assert result.success and not err
        assert out.strip() == f"stopped {a.id} (clean)"
        assert a.status == "stopped" and a.end.kind == "clean"
        assert b.status in ("starting", "running")

        _, out, err = run(shell, capsys, "%lx stop nosuch")
        assert "no running session 'nosuch'" in one_clear_line(out + err)
        _, out, err = run(shell, capsys, f"%lx stop {a.id}")  # already stopped
        assert "no running session" in one_clear_line(out + err)

        result, out, err = run(shell, capsys, "%lx stop all")
        assert result.success and not err
        assert out.strip() == f"stopped 1 session(s): {b.id}"
        assert b.status == "stopped"
        _, out, _ = run(shell, capsys, "%lx sessions")
        assert "no running sessions" in out


def test_resources(shell, capsys, tmp_path):
    result, out, err = run(shell, capsys, "%lx resources")
    assert result.success and not err
    assert out.startswith("kernel pid ") and "threads" in out and "fds" in out and "rss" in out
    assert "no sessions running" in out
    with lx.session(lx.PushSource(), output_root=tmp_path) as s:
        _, out, err = run(shell, capsys, "%lx resources")
        assert not err
        line = next(ln for ln in out.splitlines() if s.id in ln)
        assert f"pid {s.pid}" in line and "rss" in line and "fds" in line


def test_bad_input_gives_one_line(shell, capsys):
    for line, expect in (
        ("%lx bogus", "unknown %lx subcommand 'bogus'"),
        ("%lx stop", "needs one session id"),
        ("%lx sessions extra", "takes no arguments"),
        ("%lx monitor soon", "interval must be a number"),
    ):
        _, out, err = run(shell, capsys, line)
        assert expect in one_clear_line(out + err), (line, out, err)
    _, out, _ = run(shell, capsys, "%lx")
    assert out.startswith("usage: %lx sessions")


def test_monitor_is_displayed_and_returned(shell, capsys):
    from loquilex_nb.ui.widgets import ResourceMonitor

    result, out, err = run(shell, capsys, "%lx monitor 0.05")
    m = result.result
    try:
        assert result.success and not err
        assert isinstance(m, ResourceMonitor) and m.thread.is_alive()
        assert m.backend is None  # embedded mode: "auto" finds no server
        # displayed once by the magic; the cell's result is not a second live view
        assert m._repr_mimebundle_() is None
    finally:
        m.close()
    assert not m.thread.is_alive()
    assert [t for t in threading.enumerate() if t.name.startswith("loquilex-monitor-")] == []
