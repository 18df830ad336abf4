"""The leak checker must catch real leaks and stay quiet about clean code."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from loquilex_nb.core.resources import fd_targets, process_counters, worker_figures
from loquilex_nb.testing.leakcheck import Leak, LeakError, leakcheck
from loquilex_nb.testing.subreaper import is_subreaper, reap_adopted

pytest_plugins = ["pytester"]

SETTLE = 0.2
CHECKER = pytest.mark.no_leakcheck("tests the checker")
REPO = Path(__file__).resolve().parents[2]


def _kinds(err: LeakError) -> set[str]:
    return {leak.kind for leak in err.leaks}


def _wait_zombie(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "child never exited"
        time.sleep(0.01)


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in its own thread, as a live session would have."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop")
    thread.start()
    try:
        yield loop
    finally:
        async def _cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_cancel_rest(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


# --- leaks are detected -------------------------------------------------------


@CHECKER
def test_detects_thread_not_joined() -> None:
    stop = threading.Event()
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            t = threading.Thread(target=stop.wait, name="leaky-worker")
            t.start()
    stop.set()
    t.join()
    assert _kinds(info.value) == {"thread"}
    assert "leaky-worker" in str(info.value)
    assert f"ident={t.ident}" in str(info.value)
    assert "daemon=False" in str(info.value)


@CHECKER
def test_allow_threads_prefix_is_ignored() -> None:
    stop = threading.Event()
    with leakcheck(settle=SETTLE, allow_threads=("pool-",)):
        t = threading.Thread(target=stop.wait, name="pool-1")
        t.start()
    stop.set()
    t.join()


@CHECKER
def test_detects_file_left_open(tmp_path: Path) -> None:
    path = tmp_path / "left-open.txt"
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            f = open(path, "w")
    fd = f.fileno()
    f.close()
    assert _kinds(info.value) == {"fd"}
    assert f"{fd} -> {path}" in str(info.value)


@CHECKER
def test_detects_file_swapped_for_another_at_same_count(tmp_path: Path) -> None:
    # Counts stay equal (one closed, one opened) but a new file is held open.
    before = open(tmp_path / "a", "w")
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            before.close()
            after = open(tmp_path / "b", "w")
    after.close()
    assert str(tmp_path / "b") in str(info.value)


def test_file_closed_and_reopened_same_target_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "log.txt"
    f = open(path, "w")
    with leakcheck(settle=SETTLE):
        f.close()
        f = open(path, "w")
    f.close()


@CHECKER
def test_detects_socket_left_open() -> None:
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
    s.close()
    assert _kinds(info.value) == {"socket"}
    assert "socket:[" in str(info.value)
    assert "127.0.0.1:" in str(info.value)


@CHECKER
def test_detects_socket_swapped_for_another_at_same_count() -> None:
    # Counted by kind, closing the old socket would hide the new one.
    old = socket.socket()
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            old.close()
            new = socket.socket()
            new.bind(("127.0.0.1", 0))
    port = new.getsockname()[1]
    new.close()
    assert _kinds(info.value) == {"socket"}
    assert f"127.0.0.1:{port}" in str(info.value)


@CHECKER
def test_detects_unix_socketpair_left_open() -> None:
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            a, b = socket.socketpair()
    a.close()
    b.close()
    assert [leak.kind for leak in info.value.leaks] == ["socket", "socket"]


@CHECKER
def test_detects_running_child_not_reaped() -> None:
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    proc.wait()
    assert _kinds(info.value) == {"child"}
    assert f"pid={proc.pid}" in str(info.value)
    assert "sleep 30" in str(info.value)


@CHECKER
def test_detects_zombie_child() -> None:
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            proc = subprocess.Popen(["true"])
            _wait_zombie(proc)
    proc.wait()
    assert _kinds(info.value) == {"child"}
    assert "zombie" in str(info.value)


@CHECKER
def test_detects_orphaned_grandchild() -> None:
    # sh exits at once; its background sleep is re-parented to us (subreaper).
    assert is_subreaper(), "the plugin's pytest_configure makes pytest a subreaper"
    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            out = subprocess.run(
                ["sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
                check=True, capture_output=True, text=True,
            ).stdout
    orphan = int(out)
    assert _kinds(info.value) == {"child"}
    assert f"pid={orphan}" in str(info.value) and "sleep 60" in str(info.value)
    assert psutil.Process(orphan).ppid() == os.getpid()  # adopted, so countable
    assert reap_adopted(kill=True, among={orphan}) == [orphan]
    assert not psutil.pid_exists(orphan)


def test_adopted_orphan_that_exits_is_reaped_not_leaked() -> None:
    with leakcheck(settle=5.0):
        subprocess.run(["sh", "-c", "sleep 0.2 &"], check=True)


@CHECKER
def test_detects_native_thread_of_a_c_library() -> None:
    import zmq

    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE):
            ctx = zmq.Context()
            ctx.socket(zmq.PUSH).close()  # starts zmq's I/O and reaper threads
    ctx.term()
    assert _kinds(info.value) == {"native-thread"} | ({"fd"} & _kinds(info.value))
    assert "ZMQbg" in str(info.value)


def test_native_threads_joined_are_clean() -> None:
    import zmq

    with leakcheck(settle=SETTLE):
        ctx = zmq.Context()
        ctx.socket(zmq.PUSH).close()
        ctx.term()


@CHECKER
def test_detects_pending_task_of_idle_loop() -> None:
    loop = asyncio.new_event_loop()  # its epoll + self-pipe predate the block
    try:
        with pytest.raises(LeakError) as info:
            with leakcheck(settle=SETTLE, loop=loop):
                task = loop.create_task(asyncio.sleep(30), name="forgotten")
        assert _kinds(info.value) == {"task"}
        assert "forgotten" in str(info.value)
        assert "coro=sleep" in str(info.value)
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
    finally:
        loop.close()


@CHECKER
def test_detects_pending_task_of_loop_in_other_thread(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    async def spawn() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(30), name="orphan")

    with pytest.raises(LeakError) as info:
        with leakcheck(settle=SETTLE, loop=loop_thread):
            asyncio.run_coroutine_threadsafe(spawn(), loop_thread).result(5)
    assert _kinds(info.value) == {"task"}
    assert "orphan" in str(info.value)


@CHECKER
def test_block_error_is_kept_and_leak_attached_as_note() -> None:
    stop = threading.Event()
    with pytest.raises(ValueError) as info:
        with leakcheck(settle=SETTLE):
            t = threading.Thread(target=stop.wait, name="leaky-on-error")
            t.start()
            raise ValueError("original")
    stop.set()
    t.join()
    assert str(info.value) == "original"
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "leaky-on-error" in notes


def test_leak_error_pickles() -> None:
    err = LeakError([Leak("fd", "7 -> /tmp/x")], 1.0)
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.leaks == err.leaks


# --- clean code passes ---------------------------------------------------------


def test_clean_thread_joined() -> None:
    with leakcheck(settle=SETTLE):
        t = threading.Thread(target=time.sleep, args=(0.01,))
        t.start()
        t.join()


def test_thread_finishing_within_settle_passes() -> None:
    with leakcheck(settle=2.0):
        threading.Thread(target=time.sleep, args=(0.2,)).start()


def test_clean_file_closed(tmp_path: Path) -> None:
    with leakcheck(settle=SETTLE):
        with open(tmp_path / "x", "w") as f:
            f.write("x")
        with tempfile.TemporaryFile() as tf:
            tf.write(b"x")


def test_clean_socket_closed() -> None:
    with leakcheck(settle=SETTLE):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))


def test_clean_child_waited() -> None:
    with leakcheck(settle=SETTLE):
        subprocess.run(["true"], check=True)
        proc = subprocess.Popen(["sleep", "30"])
        proc.kill()
        proc.wait()


def test_task_finishing_within_settle_passes(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    async def spawn() -> None:
        asyncio.get_running_loop().create_task(asyncio.sleep(0.2))

    with leakcheck(settle=2.0, loop=loop_thread):
        asyncio.run_coroutine_threadsafe(spawn(), loop_thread).result(5)


async def test_async_test_passes_the_plugin_check() -> None:
    # pytest-asyncio's loop (epoll fd, self-pipe sockets, executor thread)
    # must be gone by the time the autouse leak check tears down, or this
    # test errors at teardown.
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.01)


# --- counters -------------------------------------------------------------------


def test_process_counters_and_worker_figures_on_real_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        counters = process_counters()
        assert counters.pid == os.getpid()
        assert child.pid in counters.children
        assert counters.threads >= 1
        assert threading.current_thread().name in counters.thread_names
        assert counters.tasks is None  # no running loop in a sync test
        assert counters.fds >= 3
        assert counters.rss > 0
        json.dumps(counters.as_dict())

        with socket.socket() as s:
            assert process_counters().sockets == counters.sockets + 1
            assert any(t.startswith("socket:") for t in fd_targets().values())
            assert fd_targets()[s.fileno()].startswith("socket:[")

        foreign = process_counters(pid=child.pid)
        assert foreign.pid == child.pid
        assert foreign.thread_names == () and foreign.tasks is None
        assert foreign.rss > 0

        first = worker_figures(child.pid)
        assert first.alive and first.pid == child.pid
        assert first.rss > 0 and first.fds >= 3
        assert first.cpu_user >= 0.0 and first.cpu_system >= 0.0
        assert first.cpu_percent is None  # no previous sample yet
        second = worker_figures(child.pid)
        assert second.cpu_percent is not None and second.cpu_percent >= 0.0
        json.dumps(second.as_dict())
    finally:
        child.kill()
        child.wait()
    gone = worker_figures(child.pid)
    assert gone.alive is False
    assert (gone.rss, gone.fds, gone.cpu_user, gone.cpu_percent) == (0, 0, 0.0, None)


def test_worker_figures_treats_zombie_as_dead() -> None:
    proc = subprocess.Popen(["true"])
    try:
        _wait_zombie(proc)
        assert worker_figures(proc.pid).alive is False
    finally:
        proc.wait()


async def test_process_counters_counts_tasks_of_running_loop() -> None:
    counters = process_counters()
    assert counters.tasks is not None and counters.tasks >= 1  # this test's task


# --- the pytest plugin, end to end in a child pytest ----------------------------
#
# The child runs with the project's real [tool.pytest.ini_options] (addopts
# load this plugin and pytest-jupyter, asyncio_mode is strict), so what is
# proven here is what `make test` does.

PLANTED = """
import asyncio, os, socket, subprocess, threading, pytest

_stop = threading.Event()
_keep = []


async def test_task_leak_jupyter_loop():
    async def lingering():
        await asyncio.sleep(60)
    asyncio.get_running_loop().create_task(lingering(), name="planted-task")


async def test_task_clean_jupyter_loop():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0.01))
    await task


@pytest.mark.asyncio
async def test_task_leak_asyncio_loop():
    async def lingering_asyncio():
        await asyncio.sleep(60)
    asyncio.get_running_loop().create_task(lingering_asyncio())


@pytest.mark.asyncio
async def test_task_clean_asyncio_loop():
    await asyncio.get_running_loop().create_task(asyncio.sleep(0.01))


@pytest.mark.asyncio(loop_scope="module")
async def test_task_leak_module_loop():
    async def lingering_module():
        await asyncio.sleep(60)
    asyncio.get_running_loop().create_task(lingering_module())


@pytest.mark.asyncio(loop_scope="module")
async def test_task_clean_module_loop():
    await asyncio.sleep(0)


@pytest.mark.no_leakcheck("tests the checker")
def test_opted_out():
    threading.Thread(target=_stop.wait, name="opted-out").start()  # stopped by test_thread_clean


def test_orphan_leak():
    subprocess.run(["sh", "-c", "sleep 61 >/dev/null 2>&1 &"], check=True)


def test_orphan_clean():
    pid = subprocess.run(["sh", "-c", "sleep 62 >/dev/null 2>&1 & echo $!"],
                         check=True, capture_output=True, text=True).stdout
    os.kill(int(pid), 9)


def test_thread_leak():
    threading.Thread(target=_stop.wait, name="planted-thread").start()


def test_thread_clean():
    _stop.set()


def test_native_thread_leak():
    import zmq
    ctx = zmq.Context()
    ctx.socket(zmq.PUSH).close()
    _keep.append(ctx)


def test_native_thread_clean():
    _keep.pop().term()


def test_fd_leak(tmp_path):
    _keep.append(open(tmp_path / "planted-file", "w"))


def test_fd_clean(tmp_path):
    _keep.pop().close()


def test_socket_leak():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    _keep.append(s)


def test_socket_clean():
    _keep.pop().close()
"""

NOTEBOOK_CELLS = {
    "leaks_thread": [
        "import threading\n_stop = threading.Event()",
        "threading.Thread(target=_stop.wait, name='nb-planted').start()",
    ],
    "leaks_child": ["import subprocess\np = subprocess.Popen(['sleep', '63'])"],
    "clean": [
        "import subprocess, threading\nt = threading.Thread(target=print, args=('hi',))\n"
        "t.start(); t.join()",
        "p = subprocess.Popen(['sleep', '64']); p.kill(); p.wait()",
    ],
}


def _project_ini() -> str:
    """The repository's [tool.pytest.ini_options], minus testpaths."""
    import tomllib

    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]
    options.pop("testpaths", None)
    assert "loquilex_nb.testing.pytest_plugin" in options["addopts"]
    assert "pytest_jupyter" in options["addopts"] and options["asyncio_mode"] == "strict"
    return "[tool.pytest.ini_options]\n" + "".join(
        f"{key} = {json.dumps(value)}\n" for key, value in options.items()
    )


def _outcomes(stdout: list[str]) -> dict[str, set[str]]:
    """test name -> outcomes from the -rA short summary (a test can fail *and* error)."""
    found: dict[str, set[str]] = {}
    for line in stdout:
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR") and "::" in rest:
            name = rest.split("::", 1)[1].split(" ", 1)[0]
            found.setdefault(name, set()).add(word)
    return found


@pytest.mark.leak_settle(10)
@pytest.mark.timeout(240)
def test_plugin_with_project_options_catches_each_leak_kind(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makefile(".toml", pyproject=_project_ini())
    pytester.makepyfile(test_planted=PLANTED)
    for name, cells in NOTEBOOK_CELLS.items():
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
        nbformat.write(nb, pytester.path / f"nb_{name}.ipynb")
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider", timeout=220)
    text = result.stdout.str()
    outcomes = _outcomes(result.stdout.lines)

    for kind in ("task_leak_jupyter_loop", "task_leak_asyncio_loop", "task_leak_module_loop", "orphan_leak",
                 "thread_leak", "native_thread_leak", "fd_leak", "socket_leak"):
        assert outcomes.get(f"test_{kind}") == {"PASSED", "ERROR"}, (kind, text)
    for kind in ("task_clean_jupyter_loop", "task_clean_asyncio_loop", "task_clean_module_loop", "opted_out", "orphan_clean",
                 "thread_clean", "native_thread_clean", "fd_clean", "socket_clean"):
        assert outcomes.get(f"test_{kind}") == {"PASSED"}, (kind, text)
    # The report names what leaked and where it came from.
    for needle in ("coro=test_task_leak_jupyter_loop.<locals>.lingering", "planted-task",
                   "created at", "lingering_asyncio", "lingering_module", "sleep 61", "planted-thread",
                   "ZMQbg", "planted-file", "127.0.0.1:"):
        assert needle in text, needle

    # the creation stack points at the line of the test that forgot its task
    assert re.search(r'test_planted\.py", line \d+, in test_task_leak_jupyter_loop', text), text
    assert "leakcheck" in outcomes, text  # notebook items are named after the file
    nb_results = {
        line.split("::")[0].split()[-1]: line.split()[0]
        for line in result.stdout.lines
        if "::leakcheck" in line and line.split()[0] in ("PASSED", "FAILED")
    }
    assert nb_results == {
        "nb_leaks_thread.ipynb": "FAILED",
        "nb_leaks_child.ipynb": "FAILED",
        "nb_clean.ipynb": "PASSED",
    }, text
    assert "nb-planted" in text and "sleep 63" in text
    assert "outlived the test run" not in text, text


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist"])
def test_process_still_running_at_the_end_of_the_run_fails_it(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, workers: list[str]
) -> None:
    # The last sweep catches what no per-test check saw (here: a test that opted out). Under
    # pytest-xdist (`make test`) a worker's own exit status is not the run's: what its sweep
    # finds must reach the controller and fail the run there.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makepyfile(
        test_sweep="""
        import subprocess, pytest

        @pytest.mark.no_leakcheck("tests the checker")
        def test_leaves_an_orphan():
            subprocess.run(["sh", "-c", "sleep 65 >/dev/null 2>&1 &"], check=True)

        def test_clean():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "loquilex_nb.testing.pytest_plugin", "-p", "no:cacheprovider", *workers)
    result.stdout.fnmatch_lines(["*1 process(es) outlived the test run (killed now):*", "*sleep 65*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
