"""A real browser runs every notebook in real JupyterLab (Run All) and checks how it ended.

JupyterLab (with the loquilex extension, its defaults, e.g. `commsOverSubshells:
perCommTarget`) serves copies of the notebooks from a temporary root outside the repository,
as for a user who copied them into their own folder. Debian's chromium, driven by Playwright
from the venv, opens each one, runs all its cells and waits for the *output* of its last code
cell (the cleanup cell that checks the kernel is back to its baseline). A test fails on any
error output, a missing output, or a kernel that is still busy afterwards.

Without chromium the module is skipped, except in CI (`CI` set), where that is a failure:
`make test` installs chromium via apt when it runs as root.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
import pytest

from loquilex_nb.testing.browser import CHROMIUM, jupyter_lab, launch_chromium
from loquilex_nb.testing.jupyter import JupyterServer
from tests.helpers import BROWSER_OUTPUT as OUTPUT
from tests.helpers import REPO

NOTEBOOKS = sorted(p.name for p in (REPO / "notebooks").glob("0*.ipynb"))

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError("CI: Debian's chromium is missing (`make browser` installs it as root)")
    pytest.skip("Debian's chromium is not installed (`make browser` installs it as root)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402  (a test dependency: never skipped)

# all cells in the DOM, so the last cell's output area can be found without scrolling
SETTINGS = {"@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"}}
LAST_RENDERING = {  # what a closed widget must leave behind, by notebook
    "02-resource-monitor.ipynb": "table.loquilex-mon",
    "05-push-audio.ipynb": ".loquilex-finals",
}
NOTEBOOK_TIMEOUT = 240.0  # seconds for Run All of one notebook (04 and 05 take ~30 s alone)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """`jupyter lab` (the extension enabled by its config) serving copies of the notebooks."""
    home = tmp_path_factory.mktemp("lab")
    (home / "root").mkdir()
    for name in NOTEBOOKS:  # outputs cleared: only what this run prints counts
        nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, home / "root" / name)
    with jupyter_lab(home, "--LabApp.expose_app_in_browser=True", timeout=120, settings=SETTINGS) as server:
        yield server


# JupyterLab's own objects (--LabApp.expose_app_in_browser): the notebook panel of the file
PANEL = """(name) => window.jupyterapp.shell.widgets('main').find(w => w.context && w.context.path === name)"""
STATE = """async (name) => {
    const panel = (%s)(name);
    if (!panel) return null;
    await panel.context.ready;
    await panel.sessionContext.ready;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const cells = [];
    for (let i = 0; i < panel.content.model.cells.length; i++) {
        const c = panel.content.model.cells.get(i);
        if (c.type === 'code') cells.push({index: i, count: c.executionCount, outputs: c.outputs.toJSON()});
    }
    return {status: kernel ? kernel.status : null, kernel: kernel ? kernel.id : null, panel: panel.id, cells};
}""" % PANEL


def dismiss_dialogs(page) -> None:
    """JupyterLab may ask which kernel to start; the notebook's own is preselected."""
    button = page.query_selector(".jp-Dialog button.jp-mod-accept")
    if button is not None:
        button.click()


def errors_in(state: dict) -> list[str]:
    return [
        re.sub(r"\x1b\[[0-9;]*m", "", f"cell {c['index']}: " + "\n".join(o.get("traceback", [])))
        for c in state["cells"] for o in c["outputs"] if o.get("output_type") == "error"
    ]


def run_all(page, lab: JupyterServer, name: str) -> dict:
    """Open `name`, Run All, wait for its last code cell's output and an idle kernel."""
    # ?reset: a fresh workspace, so no tab of an earlier notebook is restored next to this one
    page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
    deadline = time.monotonic() + 90
    while True:
        dismiss_dialogs(page)
        state = page.evaluate(STATE, name)
        if state and state["status"] == "idle":
            break
        assert time.monotonic() < deadline, f"the kernel never became idle: {state}"
        time.sleep(0.2)
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    last = state["cells"][-1]["index"]
    # the output area of the last code cell of this notebook: its source is not part of this selector
    last_output = page.locator(f"#{state['panel']} .jp-Notebook .jp-Cell").nth(last).locator(".jp-OutputArea-output")
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT
    while True:
        dismiss_dialogs(page)
        state = page.evaluate(STATE, name)
        assert not errors_in(state), "\n\n".join(errors_in(state))
        if last_output.count() > 0 and state["cells"][-1]["outputs"]:
            break
        assert time.monotonic() < deadline, f"no output from the last cell after {NOTEBOOK_TIMEOUT:.0f} s: {state}"
        time.sleep(0.25)
    deadline = time.monotonic() + 30
    while state["status"] != "idle":
        assert time.monotonic() < deadline, f"the kernel is still {state['status']} after the last cell printed"
        time.sleep(0.25)
        state = page.evaluate(STATE, name)
    assert not errors_in(state), "\n\n".join(errors_in(state))
    not_run = [c["index"] for c in state["cells"] if c["count"] is None]
    assert not not_run, f"cells that never ran: {not_run}"
    return state


@pytest.mark.leak_settle(15)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_all_in_jupyterlab(lab, name):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    shot = OUTPUT / f"{Path(name).stem}.png"
    with sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            try:
                state = run_all(page, lab, name)
            except BaseException:
                page.screenshot(path=str(OUTPUT / f"{Path(name).stem}-failure.png"), full_page=True)
                raise
            page.screenshot(path=str(shot), full_page=True)
            # widgets leave their last rendering when closed: a reader sees what happened
            rendered = " ".join(t.inner_text() for t in page.query_selector_all(LAST_RENDERING.get(name, "none")))
        finally:
            browser.close()
            lab.shutdown_kernels()  # the kernel this run started goes before the next notebook
    last_text = "".join(o.get("text", "") for o in state["cells"][-1]["outputs"])
    assert "back to baseline" in last_text, state["cells"][-1]
    assert shot.stat().st_size > 10_000
    if name in LAST_RENDERING:
        assert rendered.strip(), f"{LAST_RENDERING[name]} is gone after Run All"

