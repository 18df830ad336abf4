"""pytest plugin: every test must leave no threads, tasks, children or fds behind.

Loaded with ``-p loquilex_nb.pytest_plugin``. A leak fails the test with an
error at teardown. What it checks:

* threads (Python and native), child processes, fds and sockets, by identity,
  after all of the test's fixtures are torn down;
* tasks left pending on the event loop an async test really ran on
  (pytest-jupyter's ``jp_asyncio_loop``, or pytest-asyncio's runner), after
  the test's other fixtures are torn down and before that loop closes;
* orphans: the test process is made a child subreaper, so a grandchild whose
  parent exits is adopted by pytest and counted (and reaped once reported);
* notebooks run by nbval: each gets a ``leakcheck`` item after its last cell
  that compares the kernel with a snapshot taken before its first cell.

Markers:

* ``leak_settle(seconds)`` -- how long teardown may take to wind down (default 5 s).
* ``no_leakcheck(reason)`` -- only for tests of the leak checker itself.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from .leakcheck import POLL_INTERVAL, LeakError, describe_child, leakcheck, record_task_stacks, take_baseline
from .notebook_leakcheck import check_kernel, kernel_snapshot
from .subreaper import become_subreaper, reap_adopted

DEFAULT_SETTLE = 5.0

# pytest-asyncio adds its runner fixture to the item at setup time, after
# ours. A function-scoped runner is torn down before us, as it should be,
# but a wider-scoped one outlives the test, so it must exist before the
# baseline or its loop's fds would be blamed on the first test using it.
_WIDE_ASYNCIO_RUNNERS = tuple(
    f"_{scope}_scoped_runner" for scope in ("session", "package", "module", "class")
)

_SUBREAPER = pytest.StashKey[bool]()
_NB_BASELINE = pytest.StashKey[dict[str, Any]]()
_WORKER_STRAYS = pytest.StashKey[list[str]]()
_STRAY_KEY = "loquilex_stray_processes"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "leak_settle(seconds): time a test's resources get to wind down before "
        f"the leak check fails it (default {DEFAULT_SETTLE:g} s)",
    )
    config.addinivalue_line(
        "markers",
        "no_leakcheck(reason): skip the leak check; only for tests of the checker itself",
    )
    config.stash[_SUBREAPER] = become_subreaper()
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_XdistController(config), "loquilex-xdist-controller")


def _settle_for(node: pytest.Item) -> float:
    marker = node.get_closest_marker("leak_settle")
    if marker is None:
        return DEFAULT_SETTLE
    seconds = marker.kwargs.get("seconds", marker.args[0] if marker.args else None)
    if not isinstance(seconds, (int, float)) or seconds < 0:
        raise pytest.UsageError(f"leak_settle needs seconds >= 0, got {seconds!r}")
    return float(seconds)


def _skipped(request: pytest.FixtureRequest) -> bool:
    skip = request.node.get_closest_marker("no_leakcheck")
    if skip is None:
        return False
    if not (skip.args or skip.kwargs.get("reason")):
        raise pytest.UsageError("no_leakcheck needs a reason")
    return True


@pytest.fixture(autouse=True)
def _loquilex_leakcheck(request: pytest.FixtureRequest) -> Iterator[None]:
    if _skipped(request):
        yield
        return
    for name in _WIDE_ASYNCIO_RUNNERS:
        if name in request.fixturenames:
            request.getfixturevalue(name)
    try:
        with leakcheck(settle=_settle_for(request.node)):
            yield
    except LeakError as err:
        # Reported; orphans we adopted would otherwise run on forever.
        reap_adopted(kill=True, among={leak.pid for leak in err.leaks if leak.pid})
        raise


def _loop_fixture(request: pytest.FixtureRequest) -> str | None:
    """Name of the fixture whose loop this test runs on, if it is async."""
    item = request.node
    scope = getattr(item, "_loop_scope", None)  # a pytest-asyncio item
    if isinstance(scope, str):
        return f"_{scope}_scoped_runner"
    uses_jp_loop = "jp_asyncio_loop" in request.fixturenames
    if uses_jp_loop or inspect.iscoroutinefunction(getattr(item, "obj", None)):
        # pytest-jupyter runs every other coroutine test on this loop.
        if request._fixturemanager.getfixturedefs("jp_asyncio_loop", item):
            return "jp_asyncio_loop"
    return None


def _as_loop(value: Any) -> asyncio.AbstractEventLoop | None:
    if isinstance(value, asyncio.AbstractEventLoop):
        return value
    get_loop = getattr(value, "get_loop", None)  # asyncio.Runner
    return get_loop() if callable(get_loop) else None


@pytest.fixture(autouse=True)
def _loquilex_task_check(
    request: pytest.FixtureRequest, _loquilex_leakcheck: None
) -> Iterator[None]:
    """Pending tasks on the test's own loop, before that loop is closed.

    Requesting the loop fixture here makes it outlive this fixture: it is
    torn down after us and before ``_loquilex_leakcheck`` looks at fds.
    """
    name = None if _skipped(request) else _loop_fixture(request)
    loop = _as_loop(request.getfixturevalue(name)) if name else None
    if loop is None or loop.is_closed():
        yield
        return
    baseline = take_baseline(loop=loop)
    with record_task_stacks(loop):
        yield
    leaks = _settle_tasks(baseline, loop, _settle_for(request.node))
    if leaks:
        _cancel(loop, [t for t in _pending(loop) if t not in (baseline.tasks or ())])
        raise LeakError(leaks, _settle_for(request.node))


def _pending(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks(loop) if not t.done()]


def _settle_tasks(baseline: Any, loop: asyncio.AbstractEventLoop, settle: float) -> list[Any]:
    # The loop is idle between tests: give winding-down tasks turns to finish.
    deadline = time.monotonic() + settle
    while True:
        leaks = baseline._task_leaks()
        if not leaks or time.monotonic() >= deadline:
            return leaks
        if loop.is_running():
            time.sleep(POLL_INTERVAL)
        else:
            loop.run_until_complete(asyncio.sleep(POLL_INTERVAL))


def _cancel(loop: asyncio.AbstractEventLoop, tasks: list[asyncio.Task[Any]]) -> None:
    # After the report, so the loop can close without "Task was destroyed".
    if not tasks or loop.is_running() or loop.is_closed():
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.wait(tasks, timeout=5))


# --- notebooks (nbval) ----------------------------------------------------------


class NotebookLeakCheck(pytest.Item):
    """Runs after a notebook's last cell: the kernel must be back at its baseline."""

    def runtest(self) -> None:
        before = self.parent.stash.get(_NB_BASELINE, None)
        kernel = getattr(self.parent, "kernel", None)
        if before is None or kernel is None or not kernel.is_alive():
            raise RuntimeError("no kernel baseline: the notebook's first cell never ran")
        check_kernel(kernel, before, _settle_for(self))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"{self.name}: threads, children and fds of the kernel"


def _nbval_cell_type() -> type | None:
    try:
        from nbval.plugin import IPyNbCell
    except ImportError:
        return None
    return IPyNbCell


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    cell = _nbval_cell_type()
    if cell is None:
        return
    out: list[pytest.Item] = []
    for i, item in enumerate(items):
        out.append(item)
        last_of_notebook = isinstance(item, cell) and (
            i + 1 == len(items) or items[i + 1].parent is not item.parent
        )
        if last_of_notebook and item.get_closest_marker("no_leakcheck") is None:
            out.append(NotebookLeakCheck.from_parent(item.parent, name="leakcheck"))
    items[:] = out


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    cell = _nbval_cell_type()
    if cell is not None and isinstance(item, cell) and _NB_BASELINE not in item.parent.stash:
        # The first cell to run: the kernel is up, the notebook has done nothing yet.
        item.parent.stash[_NB_BASELINE] = kernel_snapshot(item.parent.kernel)
    return (yield)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Last sweep, after session fixtures: any child still running is a leak.

    Catches what no per-test check could: e.g. a grandchild orphaned when a
    notebook's kernel was shut down.
    """
    stray = []
    # an xdist controller runs no test: its children are the workers, each sweeping its own
    controller = session.config.pluginmanager.get_plugin("dsession") is not None
    if session.config.stash.get(_SUBREAPER, False) and not controller:
        reap_adopted()  # exited orphans: gone, only ours to collect
        for child in psutil.Process().children():
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    stray.append(child)
            except psutil.Error:
                continue
    lines = [describe_child(child) for child in stray]
    for child in stray:  # adopted or not: nothing may run on after the run
        try:
            child.kill()
            child.wait(5)
        except psutil.Error:
            pass
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        # an xdist worker: its exit status is not the run's, so the controller reports it
        workeroutput[_STRAY_KEY] = lines
    lines += session.config.stash.get(_WORKER_STRAYS, [])
    if not lines:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"loquilex leak check: {len(lines)} process(es) outlived the test run "
            "(killed now):", red=True
        )
        for line in lines:
            reporter.write_line(f"  {line}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


class _XdistController:
    """With pytest-xdist, each worker sweeps its own children at its end and hands what it
    found to the controller, which fails the run (a worker's own exit status is ignored)."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config

    @pytest.hookimpl
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        stray = getattr(node, "workeroutput", {}).get(_STRAY_KEY) or []
        if stray:
            self.config.stash[_WORKER_STRAYS] = [*self.config.stash.get(_WORKER_STRAYS, []), *stray]
