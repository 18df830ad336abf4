"""Fixtures for every test. Helpers (functions, paths) are in tests/helpers.py."""

import pytest


@pytest.fixture
def output_root(tmp_path):
    return tmp_path / "captions"


@pytest.fixture
def event_waits(monkeypatch):
    """The seqs every reader asked the supervisor's sessions for events after, one per wait:
    a reader woken by a timer shows up here with no event to show for it."""
    from loquilex_nb.supervisor.session import Session

    waits: list[int] = []
    real = Session.next_events

    async def counted(self, seq, timeout=None):
        waits.append(seq)
        return await real(self, seq, timeout)

    monkeypatch.setattr(Session, "next_events", counted)
    return waits


@pytest.fixture
def jp_server_config(request):
    """pytest-jupyter's server with only our extension on.

    LoquilexApp traitlets: the test module's ``LOQUILEX`` dict, then a test's own
    (``tests.helpers.server_config``); ``authorizer_class`` goes to the ServerApp.
    """
    loquilex = {**getattr(request.module, "LOQUILEX", {}), **getattr(request, "param", {})}
    server = {"jpserver_extensions": {"jupyter_server_ext": True}}
    if "authorizer_class" in loquilex:
        server["authorizer_class"] = loquilex.pop("authorizer_class")
    return {"ServerApp": server, "LoquilexApp": loquilex}


@pytest.fixture
def manager(jp_serverapp, jp_asyncio_loop):
    """The extension's SessionManager, started as a real server starts it.

    pytest-jupyter only calls ``start_app()``; a real ``jupyter server`` then runs
    ``_post_start`` (the extensions' start hooks: our sweeper and the kernel-event listener).
    """
    jp_asyncio_loop.run_until_complete(jp_serverapp._post_start())
    manager = jp_serverapp.web_app.settings["loquilex_manager"]
    assert manager._sweeper is not None
    return manager


@pytest.fixture(autouse=True)
def _extension_started(request):
    """Every test with pytest-jupyter's server gets the extension started (``manager``)."""
    if "jp_serverapp" in request.fixturenames:
        request.getfixturevalue("manager")
