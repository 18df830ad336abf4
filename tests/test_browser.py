"""A real browser: JupyterLab with the extension runs 02-resource-monitor; the counters render."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
OUTPUT = REPO / "test-output" / "browser"

if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (make install puts it there as root)", allow_module_level=True)

playwright = pytest.importorskip("playwright.sync_api") if not os.environ.get("CI") else __import__("playwright.sync_api")
from playwright.sync_api import sync_playwright  # noqa: E402

ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def accept_kernel_dialog(page) -> None:
    """JupyterLab sometimes asks which kernel to start; the notebook's own is preselected."""
    button = page.query_selector(".jp-Dialog button.jp-mod-accept")
    if button is not None:
        button.click()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "jupyter lab exited early"
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError("jupyter lab did not come up")


@pytest.mark.leak_settle(15)
def test_resource_monitor_renders_and_changes_in_jupyterlab(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    nb = nbformat.read(REPO / "notebooks" / "02-resource-monitor.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nbformat.write(nb, root / "02-resource-monitor.ipynb")
    port, token = free_port(), "browser-test-token"
    env = dict(os.environ)
    for name in ("runtime", "config", "data", "settings", "workspaces"):
        (tmp_path / name).mkdir()
    env.update(
        JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
        JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
    )
    env.pop("LOQUILEX_MODE", None)
    log = open(tmp_path / "lab.log", "w")
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    OUTPUT.mkdir(parents=True, exist_ok=True)
    try:
        wait_up(f"http://127.0.0.1:{port}/api/status?token={token}", lab)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            try:
                page.goto(f"http://127.0.0.1:{port}/lab/tree/02-resource-monitor.ipynb?token={token}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
                deadline = time.monotonic() + 90
                while not page.query_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']"):
                    assert time.monotonic() < deadline, "the kernel never became idle"
                    accept_kernel_dialog(page)
                    time.sleep(0.2)
                time.sleep(1.0)
                accept_kernel_dialog(page)
                page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
                page.click("li.lm-Menu-item:has-text('Run All Cells')")
                deadline = time.monotonic() + 90
                while not page.query_selector("table.loquilex-mon"):
                    assert time.monotonic() < deadline, "the resource monitor never rendered"
                    accept_kernel_dialog(page)
                    time.sleep(0.2)
                table = page.query_selector("table.loquilex-mon")
                first = table.inner_text()
                assert "threads" in first and "fds" in first and "children" in first
                changed = None
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    now = page.inner_text("table.loquilex-mon")
                    if now != first:
                        changed = now
                        break
                    time.sleep(0.25)
                assert changed is not None, "the counters never changed"
                # the monitor lists the two sessions' workers while they run
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    texts = [t.inner_text() for t in page.query_selector_all("table.loquilex-mon")]
                    if sum(t.count("running") for t in texts) >= 2:
                        break
                    time.sleep(0.1)
                else:
                    raise AssertionError("the monitor never showed the running sessions")
                page.screenshot(path=str(OUTPUT / "resource-monitor-running.png"), full_page=True)
                page.wait_for_selector("text=sessions running: 2", timeout=120_000)
                page.wait_for_selector("text=back to baseline", timeout=120_000)
                page.screenshot(path=str(OUTPUT / "resource-monitor-done.png"), full_page=True)
                errors = page.query_selector_all(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'] >> text=Error")
                assert not errors
            except BaseException:
                page.screenshot(path=str(OUTPUT / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
        # the kernel this run started is shut down through the API before the server goes
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/kernels?token={token}")
        with urllib.request.urlopen(req, timeout=5) as r:
            kernels = json.load(r)
        for k in kernels:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/api/kernels/{k['id']}?token={token}", method="DELETE"), timeout=30).close()
    finally:
        lab.terminate()
        try:
            lab.wait(30)
        except subprocess.TimeoutExpired:
            lab.kill()
            lab.wait()
        log.close()
    assert (OUTPUT / "resource-monitor-done.png").stat().st_size > 10_000
