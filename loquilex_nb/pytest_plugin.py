"""pytest plugin: every test must leave no threads, tasks, children or fds behind.

Loaded with ``-p loquilex_nb.pytest_plugin``. A leak fails the test with an
error at teardown. Markers:

* ``leak_settle(seconds)`` -- how long teardown may take to wind down (default 5 s).
* ``no_leakcheck(reason)`` -- only for tests of the leak checker itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .leakcheck import leakcheck

DEFAULT_SETTLE = 5.0

# pytest-asyncio adds its runner fixture to the item at setup time, after
# ours. A function-scoped runner is torn down before us, as it should be,
# but a wider-scoped one outlives the test, so it must exist before the
# baseline or its loop's fds would be blamed on the first test using it.
_WIDE_ASYNCIO_RUNNERS = tuple(
    f"_{scope}_scoped_runner" for scope in ("session", "package", "module", "class")
)


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


def _settle_for(node: pytest.Item) -> float:
    marker = node.get_closest_marker("leak_settle")
    if marker is None:
        return DEFAULT_SETTLE
    seconds = marker.kwargs.get("seconds", marker.args[0] if marker.args else None)
    if not isinstance(seconds, (int, float)) or seconds < 0:
        raise pytest.UsageError(f"leak_settle needs seconds >= 0, got {seconds!r}")
    return float(seconds)


@pytest.fixture(autouse=True)
def _loquilex_leakcheck(request: pytest.FixtureRequest) -> Iterator[None]:
    skip = request.node.get_closest_marker("no_leakcheck")
    if skip is not None:
        if not (skip.args or skip.kwargs.get("reason")):
            raise pytest.UsageError("no_leakcheck needs a reason")
        yield
        return
    for name in _WIDE_ASYNCIO_RUNNERS:
        if name in request.fixturenames:
            request.getfixturevalue(name)
    with leakcheck(settle=_settle_for(request.node)):
        yield
