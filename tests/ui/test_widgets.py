"""ResourceMonitor and CaptionView with real sessions (embedded mode) and real threads."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("ipywidgets")

import loquilex_nb as lx
from loquilex_nb.core.resources import process_counters
from loquilex_nb.ui.widgets import CaptionView, ResourceMonitor

from tests.helpers import FIXTURES, gone, pcm16

@pytest.fixture(autouse=True)
def embedded(monkeypatch):
    monkeypatch.setenv("LOQUILEX_MODE", "embedded")


def widget_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("loquilex-monitor-", "loquilex-captions-"))]


def test_hundred_monitors_leave_counters_flat():
    before = process_counters()
    for _ in range(100):
        m = ResourceMonitor(interval=0.01)
        t = m.thread
        assert t.is_alive() and t.name.startswith("loquilex-monitor-") and not t.daemon
        assert len(widget_threads()) == 1  # exactly one updater per monitor
        m.close()
        assert not t.is_alive(), "close() must join the updater"
        m.close()  # idempotent
        assert m.closed
    assert widget_threads() == []
    # nothing added (a thread an earlier test left settling may end meanwhile: fewer is fine;
    # the leak-check plugin compares this test's threads and fds by identity as well)
    def flat(c) -> bool:
        return c.threads <= before.threads and c.fds <= before.fds and c.sockets <= before.sockets and c.children == before.children

    # a joined thread's native task can linger in /proc for a moment after join() returns
    deadline = time.monotonic() + 2
    while not flat(after := process_counters()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flat(after), (before, after)


def test_monitor_samples_on_its_own_and_stops_promptly():
    m = ResourceMonitor(interval=0.05, history=5)
    deadline = time.monotonic() + 5
    while m.samples < 8 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.samples >= 8
    assert len(m._tracks["fds"].values) == 5  # history is bounded
    assert "<svg" in m.local_html.value and "polyline" in m.local_html.value
    t0 = time.monotonic()
    m.close()
    assert time.monotonic() - t0 < 1.0 and not m.thread.is_alive()
    assert "closed" in m.header.value


def test_monitor_sees_a_session_start_and_stop(tmp_path):
    m = ResourceMonitor(interval=3600)  # the updater stays asleep: refresh() drives it
    try:
        base = m.baseline["process"]
        assert m.latest["process"]["children"] == base["children"]
        assert base["tasks"] is None  # no private loop yet
        with lx.session(lx.PushSource(), output_root=tmp_path) as s:
            m.refresh()
            now = m.latest["process"]
            assert now["children"] == base["children"] + 1
            assert now["threads"] >= base["threads"] + 1  # the private loop thread
            assert now["tasks"] is not None and now["tasks"] >= 1  # the session's reader tasks
            assert [w["pid"] for w in m.latest["workers"]] == [s.pid]
            assert s.id in m.local_html.value and str(s.pid) in m.local_html.value
            pid = s.pid
        assert gone(pid, 1)
        # a joined thread's native task can linger in /proc for a moment: re-sample, bounded
        deadline = time.monotonic() + 2
        while m.refresh()["process"]["threads"] != base["threads"] and time.monotonic() < deadline:
            time.sleep(0.02)
        now = m.latest["process"]
        assert now["children"] == base["children"]
        assert now["threads"] == base["threads"]
        assert now["fds"] == base["fds"]
        assert now["tasks"] is None
        assert m.latest["workers"] == []
        assert "no sessions running" in m.local_html.value
    finally:
        m.close()


def test_persistent_growth_is_highlighted_and_clears(tmp_path):
    m = ResourceMonitor(interval=3600, persist=3)
    files = []
    try:
        assert m.highlighted == set() and "data-leak" not in m.local_html.value
        files = [open(tmp_path / f"held-{i}", "w") for i in range(4)]
        for _ in range(3):  # above baseline, but not for more than `persist` samples yet
            m.refresh()
            assert "fds" not in m.highlighted
        assert m.latest["process"]["fds"] == m.baseline["process"]["fds"] + 4
        assert "+4" in m.local_html.value
        m.refresh()  # the 4th sample in a row above baseline
        assert "fds" in m.highlighted
        html = m.local_html.value
        row = html[html.index("data-leak"):].split("</tr>")[0]
        assert ">fds<" in row and "background" in html[: html.index("data-leak")].rsplit("<tr", 1)[1]
        for f in files:
            f.close()
        files = []
        m.refresh()  # back at baseline: the highlight goes at once
        assert "fds" not in m.highlighted and "data-leak" not in m.local_html.value
    finally:
        for f in files:
            f.close()
        m.close()


def test_unreachable_server_is_reported_and_local_counters_go_on():
    m = ResourceMonitor(server=("http://127.0.0.1:9/", "x"), interval=3600)
    try:
        assert m.latest["server_error"].startswith("server unreachable:")
        m.refresh()
        html = m.server_html.value
        assert "server unreachable:" in html and "127.0.0.1:9" in html
        assert m.latest["server"] is None and m.baseline["server"] is None
        # the local part keeps refreshing
        n = m.samples
        m.refresh()
        assert m.samples == n + 1
        assert ">threads<" in m.local_html.value and ">fds<" in m.local_html.value
        assert m.latest["process"]["threads"] >= 1
    finally:
        m.close()
    assert not m.thread.is_alive()
    assert [t for t in threading.enumerate() if t.name == "loquilex-loop"] == []


def test_monitor_rejects_bad_arguments():
    for kwargs in ({"interval": 0}, {"interval": "1"}, {"history": 1}, {"persist": 0}, {"server": 42}):
        with pytest.raises(ValueError):
            ResourceMonitor(**kwargs)
    assert widget_threads() == []


def test_caption_view_follows_a_live_push_session(tmp_path):
    samples = pcm16(FIXTURES / "short.wav")
    with lx.session(lx.PushSource(), output_root=tmp_path) as s:
        view = CaptionView(s)
        try:
            t = view.thread
            assert t is not None and t.is_alive() and not t.daemon
            s.feed(samples)
            s.stop()
            assert view.wait(20), "the view did not see eos"
            t.join(5)
            assert not t.is_alive(), "the updater must end at eos"
            assert widget_threads() == []
            assert view.state == "stopped"
            assert [f.text for f in view.finals] == [f.text for f in s.finals] and s.finals
            html = view.finals_html.value
            for f in s.finals:
                assert f"[00:0{int(f.t0)}." in html
            assert "short test" in html.lower()
            status = view.status_html.value
            assert "stopped" in status and "clean" in status
            assert view.partial_html.value.count("…") == 0  # no partial left after eos
            if any((f.data or {}).get("latency") is not None for f in s.finals):
                assert "latency" in status
        finally:
            view.close()


def test_caption_view_close_is_prompt_on_an_idle_session(tmp_path):
    with lx.session(lx.PushSource(), output_root=tmp_path) as s:
        view = CaptionView(s)
        time.sleep(0.3)  # no audio: no events at all
        t0 = time.monotonic()
        view.close()
        assert time.monotonic() - t0 < 1.0
        assert not view.thread.is_alive()
        view.close()


def test_caption_view_wakes_on_events_not_on_a_timer(tmp_path, event_waits):
    waits = event_waits
    with lx.session(lx.PushSource(), output_root=tmp_path) as s:
        view = CaptionView(s)
        try:
            deadline = time.monotonic() + 120
            while view.state != "running":
                assert time.monotonic() < deadline, "the view never saw running"
                time.sleep(0.02)
            time.sleep(0.1)
            before = len(waits)
            time.sleep(1.5)  # an idle session: no events, so no reason to wake
            assert len(waits) - before == 0, "the view polled the session"
            s.stop()
            assert view.wait(20) and view.state == "stopped"
        finally:
            view.close()
    assert not view.thread.is_alive()


def test_caption_view_of_a_session_not_started_yet(tmp_path):
    never = lx.session(lx.PushSource(), output_root=tmp_path)
    view = CaptionView(never)
    assert view.state == "created" and view.thread.is_alive()
    never.close()  # closed before it ever started: the view says so and its thread ends
    assert view.wait(5) and not view.thread.is_alive()
    assert "closed before it started" in view.status_html.value
    view.close()

    later = lx.session(lx.PushSource(), output_root=tmp_path)
    view = CaptionView(later)
    try:
        with later:  # started after the view was made: the view follows it
            deadline = time.monotonic() + 10
            while view.state == "created" and time.monotonic() < deadline:
                time.sleep(0.02)
            assert view.state in ("starting", "running")
        assert view.wait(10) and view.state == "stopped"
        assert "clean" in view.status_html.value
    finally:
        view.close()


def test_caption_view_follows_a_session_once_it_starts(tmp_path):
    later = lx.session(lx.PushSource(), output_root=tmp_path)
    view = CaptionView(later)
    try:
        assert view.state == "created" and view.thread.is_alive()
        with later:  # the start itself wakes the view: it never looks on a timer
            later.stop()
            assert view.wait(20), "the view did not follow the session it waited for"
        assert view.state == "stopped" and "clean" in view.status_html.value
    finally:
        view.close()
    assert not view.thread.is_alive()


def test_caption_view_of_a_stopped_session_has_no_thread(tmp_path):
    with lx.session(lx.PushSource(), output_root=tmp_path) as s:
        s.feed(pcm16(FIXTURES / "short.wav"))
        s.stop()
    assert s.end.kind == "clean"
    view = CaptionView(s)
    try:
        assert view.thread is None and view.wait(0)
        assert widget_threads() == []
        assert "stopped" in view.status_html.value and "clean" in view.status_html.value
        assert all(f.text in view.finals_html.value for f in s.finals) and s.finals
    finally:
        view.close()


def test_caption_view_of_a_failed_session_shows_why(tmp_path):
    with lx.session(lx.PushSource(), output_root=tmp_path) as s:
        live = CaptionView(s)
        try:
            s.feed(pcm16(FIXTURES / "short.wav")[:8000])
            os.kill(s.pid, signal.SIGKILL)
            assert live.wait(20)
            live.thread.join(5)
            assert not live.thread.is_alive()
            status = live.status_html.value
            assert live.state == "failed"
            assert "failed" in status and "crashed" in status and "SIGKILL" in status
        finally:
            live.close()
        after = CaptionView(s)  # the same session, already ended: drawn at once
        try:
            assert after.thread is None
            status = after.status_html.value
            assert "failed" in status and "crashed" in status and "SIGKILL" in status
        finally:
            after.close()
    assert s.end.kind == "crashed"


def test_an_open_monitor_does_not_hold_up_interpreter_exit(tmp_path):
    code = (
        "from loquilex_nb.ui.widgets import ResourceMonitor, CaptionView\n"
        "m = ResourceMonitor(interval=0.05)\n"
        "print(m.thread.name, flush=True)\n"
    )
    env = dict(os.environ, LOQUILEX_MODE="embedded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("loquilex-monitor-")


async def test_monitor_shows_the_server_and_its_sessions(jp_serverapp, jp_fetch, jp_root_dir):  # jp_fetch: serve HTTP
    from loquilex_nb.remote.client import RemoteBackend

    url = jp_serverapp.connection_url.replace("localhost", "127.0.0.1")
    token = jp_serverapp.identity_provider.token
    # the server answers on this thread's loop: the monitor's blocking calls go to a thread
    m = await asyncio.to_thread(ResourceMonitor, server=(url, token), interval=3600)
    try:
        assert m.latest["server_error"] is None
        assert m.latest["server"]["pid"] == os.getpid() and m.baseline["server"] is not None
        assert ">threads<" in m.server_html.value and "server unreachable" not in m.server_html.value
        assert "no sessions running" in m.server_html.value
        backend = RemoteBackend(url, token, root_dir=jp_root_dir)
        async with lx.session(lx.PushSource(), backend=backend) as s:
            await asyncio.to_thread(m.refresh)
            [worker] = m.latest["server_sessions"]
            assert worker["sid"] == s.id and worker["pid"] == s.pid and worker["alive"]
            assert s.id in m.server_html.value and str(s.pid) in m.server_html.value
            assert m.latest["server"]["children"] == m.baseline["server"]["children"] + 1
            await s.stop()
        await asyncio.to_thread(m.refresh)
        assert m.latest["server_sessions"] == []
        assert m.latest["server"]["children"] == m.baseline["server"]["children"]
    finally:
        await asyncio.to_thread(m.close)
    # "auto" follows lx.connect (and a kernel's own server)
    from loquilex_nb import backends

    backend = backends.connect(url, token, check=False)
    try:
        auto = await asyncio.to_thread(ResourceMonitor, server="auto", interval=3600)
        try:
            assert auto.backend is backend and auto.latest["server_error"] is None
        finally:
            await asyncio.to_thread(auto.close)
    finally:
        backends._reset()


async def test_monitor_lists_this_kernels_server_sessions_by_notebook_name(jp_serverapp, jp_fetch, jp_root_dir):
    """In server mode "sessions of this kernel" are the server's sessions it owns, named by notebook."""
    from loquilex_nb.remote.client import RemoteBackend

    url = jp_serverapp.connection_url.replace("localhost", "127.0.0.1")
    token = jp_serverapp.identity_provider.token
    r = await jp_fetch("api", "sessions", method="POST", body=json.dumps(
        {"path": "talks/demo.ipynb", "name": "demo.ipynb", "type": "notebook", "kernel": {"name": "python3"}}))
    kid = json.loads(r.body)["kernel"]["id"]
    try:
        backend = RemoteBackend(url, token, kernel_id=kid, root_dir=jp_root_dir)
        m = await asyncio.to_thread(ResourceMonitor, server=backend, interval=3600)
        try:
            assert "no sessions running" in m.local_html.value
            async with lx.session(lx.PushSource(), backend=backend) as s:
                await asyncio.to_thread(m.refresh)
                mine = m.local_html.value.split("sessions of this kernel")[1]
                assert s.id in mine and str(s.pid) in mine
                assert "demo.ipynb" in mine and kid not in m.local_html.value + m.server_html.value
                await s.stop()
        finally:
            await asyncio.to_thread(m.close)
    finally:
        await jp_serverapp.kernel_manager.shutdown_kernel(kid, now=True)


def test_close_keeps_the_last_rendering_and_remove_takes_it_away():
    m = ResourceMonitor(interval=3600)
    m.close()
    assert not m.thread.is_alive() and m.comm is not None, "closed: the view stays"
    assert "closed" in m.header.value and ">threads<" in m.local_html.value
    assert all(w.comm is not None for w in m.children)
    m.remove()
    assert m.comm is None and all(w.comm is None for w in m.children)
