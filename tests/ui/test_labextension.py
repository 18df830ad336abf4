"""The JupyterLab extension in a real browser: Debian's chromium driven by Playwright, JupyterLab
started here, Chromium's fake microphone fed from a fixture made 44.1 kHz stereo."""

from __future__ import annotations

import os
import re
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from loquilex_nb.testing.browser import CHROMIUM, batch_text, fake_mic_wav, jupyter_lab, launch_chromium, open_sidebar, run_from_palette, wait_for, wait_for_revisions
from tests.helpers import BROWSER_OUTPUT as OUTPUT
from tests.helpers import FIXTURES, wer

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (make test installs it as root)", allow_module_level=True)
from playwright.sync_api import sync_playwright  # noqa: E402

LEASE = 3.0
SIDEBAR = "#loquilex-sidebar"
PANEL = ".lx-CaptionPanel.lx-mod-mic"
FAKE_MIC = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream")
pytestmark = pytest.mark.leak_settle(15)


def set_theme(page, dark: bool) -> None:
    page.click("div.lm-MenuBar-itemLabel:text-is('Settings')")
    page.click("li.lm-Menu-item:has-text('Theme')")
    page.click(f"li.lm-Menu-item:has-text('{'JupyterLab Dark' if dark else 'JupyterLab Light'}')")
    wait_for(lambda: page.evaluate("document.body.dataset.jpThemeLight") == ("false" if dark else "true"), 20, "the theme")
    time.sleep(0.5)


def row(page, sid: str) -> str:
    return f"{SIDEBAR} li.lx-session[data-sid='{sid}']"


@contextmanager
def mic_page(lab, wav: Path):
    """A tab of `lab` in a Chromium whose fake microphone plays `wav` once; closed on exit."""
    with sync_playwright() as p:
        browser = launch_chromium(p, *FAKE_MIC, f"--use-file-for-fake-audio-capture={wav}%noloop")
        try:
            yield browser.new_page(viewport={"width": 1300, "height": 850})
        finally:
            browser.close()


def short_mic(tmp_path) -> Path:
    wav = tmp_path / "mic.wav"
    fake_mic_wav(FIXTURES / "short.wav", wav)
    return wav


def worker_pid(lab, sid: str) -> int:
    pid = lab.api("GET", f"loquilex/api/sessions/{sid}")["pid"]
    assert pid and psutil.Process(pid).ppid() == lab.proc.pid  # a worker of *this* server
    return pid


def running_workers(lab) -> list[int]:
    """Pids of the server's running worker processes. A child that already exited (one of
    JupyterLab's own short-lived helpers) is a zombie until the server reaps it: its command
    line is gone, and it runs nothing."""
    pids = []
    for child in psutil.Process(lab.proc.pid).children():
        try:
            if "loquilex_nb.worker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
    return pids


def test_sidebar_lists_a_notebook_session_and_drops_it_when_the_kernel_restarts(tmp_path):
    from jupyter_client import BlockingKernelClient

    with jupyter_lab(tmp_path) as lab:
        (lab.root / "speech.wav").write_bytes((FIXTURES / "speech.wav").read_bytes())
        nb = lab.api("POST", "api/sessions", {"path": "owner.ipynb", "type": "notebook", "name": "owner.ipynb", "kernel": {"name": "python3"}})
        kid = nb["kernel"]["id"]
        kc = BlockingKernelClient(connection_file=str(lab.runtime / f"kernel-{kid}.json"))
        kc.load_connection_file()
        kc.start_channels(hb=False)
        try:
            kc.wait_for_ready(timeout=60)
            reply = kc.execute_interactive(
                "import loquilex_nb as lx\ns = lx.session('speech.wav', realtime=True)\ns.start()\nprint(s.id)", timeout=120
            )
            assert reply["content"]["status"] == "ok", reply["content"]
            sessions = wait_for(lambda: lab.api("GET", "loquilex/api/sessions")["sessions"], 30, "the kernel's session")
            (info,) = sessions
            assert info["owner"] == kid
            with sync_playwright() as p:
                browser = launch_chromium(p)
                page = browser.new_page(viewport={"width": 1300, "height": 850})
                try:
                    open_sidebar(page, lab)
                    page.wait_for_selector(f"{SIDEBAR} ul.lx-sessions:not(.lx-ended) {row(page, info['id'])[len(SIDEBAR) + 1:]}", timeout=30_000)
                    li = page.locator(row(page, info["id"]))
                    wait_for(lambda: li.get_attribute("data-owner") == "owner.ipynb", 20, "the notebook as owner")
                    assert li.get_attribute("data-kind") == "file"
                    # the live text arrives through the sidebar's socket: the latest final
                    wait_for(lambda: li.locator(".lx-final-line").inner_text().strip(), 60, "a final in the sidebar")
                    counters = page.locator(f"{SIDEBAR} .lx-counter[data-counter='children']")
                    assert int(counters.get_attribute("data-value")) >= 1
                    wait_for(lambda: page.locator(f"{SIDEBAR} .lx-worker").count() == 1, 10, "the worker's row")
                    page.screenshot(path=str(OUTPUT / "labext-sidebar.png"))
                    lab.api("POST", f"api/kernels/{kid}/restart")
                    wait_for(lambda: page.locator(f"{SIDEBAR} ul.lx-ended li.lx-session[data-sid='{info['id']}']").count() == 1,
                             30, "the session to leave the running list")
                    assert page.locator(f"{SIDEBAR} ul.lx-sessions:not(.lx-ended) li.lx-session").count() == 0
                    wait_for(lambda: page.locator(f"{SIDEBAR} .lx-worker").count() == 0, 10, "the worker's row to go")
                finally:
                    page.screenshot(path=str(OUTPUT / "labext-sidebar-end.png"))
                    browser.close()
        finally:
            kc.stop_channels()
            lab.shutdown_kernels()


class HeldSessionStart:
    """Holds the browser's request for a new session until `release`: a loaded server, slow to
    start the worker. (Sync Playwright runs route handlers only inside its own calls, and a
    Python predicate would hold every request of the page: a pattern, and unrouted at release.)"""

    URL = re.compile(r"/loquilex/api/browser-sessions(\?.*)?$")

    def __init__(self, page) -> None:
        self.page, self.held = page, []
        page.route(self.URL, self._route)

    def _route(self, route) -> None:
        if route.request.method == "POST":
            self.held.append(route)
        else:
            route.continue_()

    def wait(self) -> None:
        wait_for(lambda: self.page.wait_for_timeout(20) or self.held, 30, "the request for a session")

    def release(self, after: float = 0.0) -> None:
        self.wait()
        self.page.wait_for_timeout(after * 1000)
        for route in self.held:
            route.continue_()
        self.page.unroute(self.URL, self._route)


def test_caption_my_microphone_live_then_closing_the_tab_stops_it(tmp_path):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    wav = tmp_path / "mic-44k-stereo.wav"
    # the fake device starts playing at getUserMedia, like a real microphone: 0.75 s of silence
    # before the first word, as when a person speaks once the browser shows it is recording
    audio_s = fake_mic_wav(FIXTURES / "speech.wav", wav, lead=0.25)
    reference = (FIXTURES / "speech.txt").read_text()
    batch = wer(reference, batch_text(wav, tmp_path / "batch-captions"))
    with jupyter_lab(tmp_path, f"--LoquilexApp.browser_lease={LEASE}") as lab, mic_page(lab, wav) as page:
        # a loaded server takes a while to start the worker: the panel must capture from the
        # moment the microphone is granted and send that audio once the socket is open
        # (with the capture started after the socket, the first word loses its lead-in or
        # its start: the first final's t0 below)
        start = HeldSessionStart(page)
        open_sidebar(page, lab)
        page.click(f"{SIDEBAR} button.lx-mic")
        t_click = time.monotonic()
        start.release(after=1.5)
        panel = page.locator(PANEL)
        sid = wait_for(lambda: panel.get_attribute("data-sid"), 30, "a session id in the panel")
        leases = lab.api("GET", "loquilex/api/browser-sessions")["sessions"]
        assert [x["sid"] for x in leases] == [sid]
        info = lab.api("GET", f"loquilex/api/sessions/{sid}")
        assert info["source"] == {"kind": "push"} and info["owner"] is None
        pid = worker_pid(lab, sid)
        # finals appear while the audio plays, not after it: the first well before its end
        page.wait_for_selector(f"{PANEL} li.lx-final", timeout=30_000)
        assert time.monotonic() - t_click < audio_s - 5
        # nothing was lost while the session started: the silence before the first word
        # reached the worker too (0.75 s in the file; ~0 when the capture waits for the socket)
        first_t0 = float(page.locator(f"{PANEL} li.lx-final").first.get_attribute("data-t0"))
        assert first_t0 >= 0.4, first_t0
        page.wait_for_selector(f"{row(page, sid)}[data-owner='this browser']", timeout=10_000)
        assert page.locator(row(page, sid)).get_attribute("data-kind") == "browser mic"
        # let the whole file play, then its tail of silence end the last utterance: its
        # final is the one ending in the last 4.5 s (the 2 s tail, the fixture's own
        # trailing silence, the capture's late start). On a loaded machine the worker
        # lags a few seconds: wait for it rather than read at a fixed time.
        wait_for(lambda: time.monotonic() - t_click > audio_s + 1, audio_s + 10, "the file to play")
        ends = page.locator(f"{PANEL} li.lx-final")
        wait_for(lambda: max(map(float, ends.evaluate_all("els => els.map(e => e.dataset.t1)")), default=0) >= audio_s - 4.5,
                 30, "the final of the last utterance")
        texts = [t.strip() for t in page.locator(f"{PANEL} li.lx-final .lx-text").all_inner_texts()]
        finals_wer = wer(reference, " ".join(texts))
        lease = lab.api("GET", "loquilex/api/browser-sessions")["sessions"][0]
        elapsed = time.monotonic() - t_click
        # the server got the audio at the audio rate: all of the file (it played in full)
        # and no more than the wall time allows
        assert audio_s - 0.5 <= lease["pcm_seconds"] <= elapsed + 0.5, (lease, audio_s, elapsed)
        assert lease["connected"] and not lease["expired"]
        # The panel's captions are the finals as revisions leave them (the caption files
        # too). Every final is revised, or left, within the revision bound of audio after
        # its end: the mic goes on sending silence, so read the panel once that has passed.
        last_t1 = max(map(float, ends.evaluate_all("els => els.map(e => e.dataset.t1)")))
        wait_for_revisions(t_click, last_t1, lag=4.0)
        texts = [t.strip() for t in page.locator(f"{PANEL} li.lx-final .lx-text").all_inner_texts()]
        live_wer = wer(reference, " ".join(texts))
        revised = page.locator(f"{PANEL} li.lx-final.lx-revised").count()
        print(f"live WER {live_wer:.3f} ({revised} revised; finals alone {finals_wer:.3f}) vs batch {batch:.3f}; "
              f"{lease['pcm_frames']} frames, {lease['pcm_bytes']} bytes in {elapsed:.1f} s; captions: {texts}")
        # tiny.en with greedy decoding hears the first sentence as "But whether it's
        # sunny" in any window under ~15 s; the revision block's beam search hears "The
        # weather is" given a lead-in before the first word. A loaded server once left it
        # wrong: the capture then started only after the session and its socket, and the
        # first word lost its lead-in (or its start). The capture now starts at the grant.
        assert live_wer <= batch + 0.05, (texts, live_wer, batch)
        page.screenshot(path=str(OUTPUT / "labext-mic-light.png"))
        set_theme(page, dark=True)
        page.screenshot(path=str(OUTPUT / "labext-mic-dark.png"))
        set_theme(page, dark=False)
        # closing the tab (no goodbye): the lease stops the session, its worker goes
        proc = psutil.Process(pid)  # before the close: a reaped pid has no Process
        page.close()
        t_closed = time.monotonic()
        try:
            proc.wait(LEASE + 2.0)
        except psutil.TimeoutExpired as exc:
            raise AssertionError(f"the worker outlived the lease: {time.monotonic() - t_closed:.1f} s after the tab closed") from exc
        gone_after = time.monotonic() - t_closed
        info = wait_for(lambda: (i := lab.api("GET", f"loquilex/api/sessions/{sid}"))["end"] and i, 5, "the end")
        assert info["state"] == "stopped", info
        print(f"worker gone {gone_after:.2f} s after the tab closed (lease {LEASE} s)")
        (lease,) = lab.api("GET", "loquilex/api/browser-sessions")["sessions"]
        assert lease["expired"] and lease["ended"] and not lease["connected"], lease


CLOSE_MIC_PANEL = ".lm-DockPanel-tabBar .lm-TabBar-tab:has-text('Microphone captions') .lm-TabBar-tabCloseIcon"


def test_closing_the_panel_stops_the_session(tmp_path):
    with jupyter_lab(tmp_path, "--LoquilexApp.browser_lease=60") as lab, mic_page(lab, short_mic(tmp_path)) as page:
        open_sidebar(page, lab)
        run_from_palette(page, "Caption My Microphone")  # keyboard only
        sid = wait_for(lambda: page.locator(PANEL).get_attribute("data-sid"), 30, "a session")
        page.wait_for_selector(f"{PANEL} li.lx-final", timeout=30_000)
        proc = psutil.Process(worker_pid(lab, sid))  # before the close: a reaped pid has no Process
        page.click(CLOSE_MIC_PANEL)
        # the lease is 60 s: only the panel's own stop can end it this fast
        proc.wait(15)
        info = wait_for(lambda: (i := lab.api("GET", f"loquilex/api/sessions/{sid}"))["end"] and i, 5, "the end")
        assert info["state"] == "stopped" and info["end"]["kind"] == "clean", info


def test_closing_the_panel_while_the_session_starts_stops_it(tmp_path):
    """The panel is closed while the server is still creating its session: the session the
    server then creates is stopped by the panel, not left to the lease (60 s here)."""
    with jupyter_lab(tmp_path, "--LoquilexApp.browser_lease=60") as lab, mic_page(lab, short_mic(tmp_path)) as page:
        start = HeldSessionStart(page)
        open_sidebar(page, lab)
        page.click(f"{SIDEBAR} button.lx-mic")
        start.wait()
        page.click(CLOSE_MIC_PANEL)
        start.release()
        (info,) = wait_for(lambda: lab.api("GET", "loquilex/api/sessions")["sessions"], 30, "the session the server went on to create")
        info = wait_for(lambda: (i := lab.api("GET", f"loquilex/api/sessions/{info['id']}"))["end"] and i, 15, "the session to end")
        assert info["state"] == "stopped", info
        (lease,) = lab.api("GET", "loquilex/api/browser-sessions")["sessions"]
        assert lease["ended"] and not lease["connected"], lease


def mic_refused(tmp_path, kind: str, words: str, *chromium_args: str) -> None:
    """Caption my microphone in a browser that cannot give one: the panel says why (`kind`),
    and the server has no session and no lease."""
    with jupyter_lab(tmp_path) as lab:
        with sync_playwright() as p:
            browser = launch_chromium(p, *chromium_args)
            page = browser.new_page(viewport={"width": 1300, "height": 850})
            try:
                open_sidebar(page, lab)
                page.click(f"{SIDEBAR} button.lx-mic")
                error = page.locator(f"{PANEL} .lx-error[data-kind='{kind}']")
                error.wait_for(timeout=30_000)
                assert words in error.inner_text()
                assert page.locator(PANEL).get_attribute("data-state") == "error"
                page.screenshot(path=str(OUTPUT / f"labext-{kind}.png"))
                assert lab.api("GET", "loquilex/api/sessions")["sessions"] == []
                assert lab.api("GET", "loquilex/api/browser-sessions")["sessions"] == []
            finally:
                browser.close()


def test_permission_denied_shows_an_error_and_creates_nothing(tmp_path):
    # a fake device but no fake UI: nobody grants the permission
    mic_refused(tmp_path, "permission-denied", "denied", "--use-fake-device-for-media-stream")


def test_no_microphone_shows_an_error_and_creates_nothing(tmp_path):
    # the permission is granted (fake UI) but there is no capture device: Chromium's audio
    # input is switched off, as on a machine without a microphone
    mic_refused(tmp_path, "no-microphone", "no microphone", "--use-fake-ui-for-media-stream", "--disable-audio-input")


def test_session_limit_shows_an_error_and_leaves_nothing_running(tmp_path):
    with jupyter_lab(tmp_path, "--LoquilexApp.max_sessions=1") as lab:
        held = lab.api("POST", "loquilex/api/sessions", {"source": {"kind": "push"}})
        with mic_page(lab, short_mic(tmp_path)) as page:
            open_sidebar(page, lab)
            page.wait_for_selector(row(page, held["id"]), timeout=30_000)
            page.click(f"{SIDEBAR} button.lx-mic")
            error = page.locator(f"{PANEL} .lx-error[data-kind='session-limit']")
            error.wait_for(timeout=30_000)
            assert "session limit" in error.inner_text()
            panel = page.locator(PANEL)
            assert panel.get_attribute("data-state") == "error" and not panel.get_attribute("data-sid")
            page.screenshot(path=str(OUTPUT / "labext-session-limit.png"))
            # nothing of the refused start runs: no session, no lease, no worker, and the
            # only socket to the server's one session is the sidebar's
            (only,) = lab.api("GET", "loquilex/api/sessions")["sessions"]
            assert only["id"] == held["id"] and only["end"] is None
            assert lab.api("GET", "loquilex/api/browser-sessions")["sessions"] == []
            held_pid = lab.api("GET", f"loquilex/api/sessions/{held['id']}")["pid"]
            assert running_workers(lab) == [held_pid]
            res = lab.api("GET", "loquilex/api/resources")
            assert [(s["sid"], s["connections"]) for s in res["sessions"]] == [(held["id"], 1)]
            # the panel holds no microphone: the same page can caption once the slot is free
            lab.api("DELETE", f"loquilex/api/sessions/{held['id']}")
            page.click(CLOSE_MIC_PANEL)
            page.click(f"{SIDEBAR} button.lx-mic")
            sid = wait_for(lambda: page.locator(PANEL).get_attribute("data-sid"), 30, "a session once the slot is free")
            assert lab.api("GET", f"loquilex/api/sessions/{sid}")["source"] == {"kind": "push"}
            proc = psutil.Process(worker_pid(lab, sid))
            page.click(CLOSE_MIC_PANEL)
            proc.wait(15)


POOL_THREADS = ("ThreadPoolExecutor-", "asyncio_")


def server_counters(lab, reads: int = 6) -> dict:
    """The server process's counters (GET loquilex/api/resources), the median of a few reads:
    a request in flight (the sidebar polls every second) adds to one read, and a socket's task
    that is between two waits is missing from one."""
    rows = []
    for _ in range(reads):
        res = lab.api("GET", "loquilex/api/resources")
        srv = res["server"]
        # an executor grows by one idle worker when requests overlap (the sidebar's polling and
        # ours) and keeps it: the loop owns those, not a tab or a socket
        pool = sum(1 for name in srv["thread_names"] if name.startswith(POOL_THREADS))
        rows.append({
            "threads": srv["threads"] - pool, "tasks": srv["tasks"], "children": len(srv["children"]),
            "sockets": srv["sockets"], "other_fds": srv["fds"] - srv["sockets"],
            "connections": sum(s["connections"] for s in res["sessions"]),
        })
        time.sleep(0.3)
    return {k: statistics.median_low(r[k] for r in rows) for k in rows[0]}


def steady_counters(lab, timeout: float = 20.0) -> dict:
    """`server_counters` once two reads 2 s apart agree: a tab opens some of JupyterLab's own
    connections seconds after it renders, and a figure read before them is off by one socket."""
    deadline = time.monotonic() + timeout
    last = server_counters(lab)
    while time.monotonic() < deadline:
        time.sleep(2.0)
        now = server_counters(lab)
        if now == last:
            break
        last = now
    return last


def python_watcher_cost(lab, sid: str) -> dict:
    """What one WebSocket watching a session costs the server, measured with a plain client."""
    import asyncio
    import json

    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    before = server_counters(lab)

    async def watch() -> dict:
        url = lab.url.replace("http", "ws", 1) + f"/loquilex/api/sessions/{sid}/events"
        ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {lab.token}"}))
        try:
            await ws.write_message(json.dumps({"type": "hello"}))
            assert json.loads(await ws.read_message())["type"] == "welcome"
            return await asyncio.get_running_loop().run_in_executor(None, server_counters, lab)
        finally:
            ws.close()
            while await asyncio.wait_for(ws.read_message(), 10) is not None:
                pass  # until the server's close: the socket is shut before the loop ends

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # a loop of its own: Playwright's runs in this thread
        during = pool.submit(asyncio.run, watch()).result(60)
    wait_for(lambda: server_counters(lab, 1)["connections"] == before["connections"], 10, "the plain client's socket to go")
    return {k: during[k] - before[k] for k in before}


def test_the_sidebar_holds_nothing_on_the_server_but_its_connections(tmp_path):
    n = 3
    with jupyter_lab(tmp_path) as lab:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                # a first tab warms what JupyterLab itself starts once (thread pools, caches)
                # and measures what a tab costs the server with no session to watch
                page = browser.new_page(viewport={"width": 1300, "height": 850})
                open_sidebar(page, lab)
                time.sleep(3)
                tab_only = steady_counters(lab)
                page.close()
                time.sleep(3)
                idle = steady_counters(lab)
                sids = [lab.api("POST", "loquilex/api/sessions", {"source": {"kind": "push"}})["id"] for _ in range(n)]
                wait_for(lambda: all(lab.api("GET", f"loquilex/api/sessions/{s}")["state"] == "running" for s in sids), 120, "the workers to load")
                one_ws = python_watcher_cost(lab, sids[0])
                assert one_ws["connections"] == 1 and one_ws["threads"] == 0 and one_ws["children"] == 0, one_ws
                sessions = steady_counters(lab)

                page = browser.new_page(viewport={"width": 1300, "height": 850})
                open_sidebar(page, lab)
                for sid in sids:
                    page.wait_for_selector(row(page, sid), timeout=30_000)
                res = wait_for(lambda: (r := lab.api("GET", "loquilex/api/resources")) and all(s["connections"] == 1 for s in r["sessions"]) and r,
                               30, "one sidebar socket per session")
                assert sorted(s["sid"] for s in res["sessions"]) == sorted(sids)
                time.sleep(3)
                watching = steady_counters(lab)
                page.screenshot(path=str(OUTPUT / "labext-sidebar-counters.png"))
                page.close()
                wait_for(lambda: server_counters(lab, 1)["connections"] == 0, 15, "the sidebar's sockets to close")
                time.sleep(3)
                after = steady_counters(lab)
            finally:
                browser.close()
        page_cost = {k: tab_only[k] - idle[k] for k in idle}
        added = {k: watching[k] - sessions[k] - page_cost[k] for k in idle}
        print(f"a tab: {page_cost}; one WebSocket: {one_ws}; the sidebar watching {n} sessions adds {added}")
        # one socket per watched session, each costing what any client's socket costs ...
        assert watching["connections"] - sessions["connections"] == n
        assert added["tasks"] == n * one_ws["tasks"], (added, one_ws)
        # ... and nothing else: no thread, no process, no file
        assert added["threads"] == 0 and added["children"] == 0 and added["other_fds"] == 0, added
        assert n <= added["sockets"] <= n * one_ws["sockets"] + 2, added  # + keep-alive HTTP of the polling
        # all of it released when the tab closes
        for key in ("threads", "tasks", "children", "other_fds", "connections"):
            assert after[key] == sessions[key], (key, sessions, after)
        assert after["sockets"] <= sessions["sockets"], (sessions, after)
        for sid in sids:
            lab.api("DELETE", f"loquilex/api/sessions/{sid}")


def test_without_the_server_extension_both_views_say_so(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_server_config.json").write_text('{"ServerApp": {"jpserver_extensions": {"jupyter_server_ext": false}}}')
    with jupyter_lab(tmp_path) as lab:
        with sync_playwright() as p:
            browser = launch_chromium(p, *FAKE_MIC)
            page = browser.new_page(viewport={"width": 1300, "height": 850})
            try:
                page.goto(lab.lab_url())
                page.wait_for_selector(f"{SIDEBAR}[data-error='no-extension'], .jp-SideBar [data-id='loquilex-sidebar']", timeout=90_000)
                if not page.is_visible(f"{SIDEBAR} button.lx-mic"):
                    page.click(".jp-SideBar [data-id='loquilex-sidebar']")
                page.wait_for_selector(f"{SIDEBAR}[data-error='no-extension'] .lx-error", timeout=30_000)
                assert "not running" in page.inner_text(f"{SIDEBAR} .lx-error")
                page.click(f"{SIDEBAR} button.lx-mic")
                page.locator(f"{PANEL} .lx-error[data-kind='no-extension']").wait_for(timeout=30_000)
                assert page.locator(PANEL).get_attribute("data-state") == "error"
            finally:
                browser.close()
