"""`lx.configure(max_sessions=...)` and $LOQUILEX_MAX_SESSIONS: the embedded supervisor's limit."""

import pytest
from traitlets import TraitError

import loquilex_nb as lx
from loquilex_nb.supervisor.runtime import DEFAULT_MAX_SESSIONS, MAX_SESSIONS_ENV, RUNTIME


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.delenv(MAX_SESSIONS_ENV, raising=False)
    monkeypatch.setenv("LOQUILEX_MODE", "embedded")
    monkeypatch.setenv("LOQUILEX_OUTPUT_ROOT", str(tmp_path))
    yield
    monkeypatch.delenv(MAX_SESSIONS_ENV, raising=False)
    lx.configure(max_sessions=None)


BAD = [0, -1, 2.5, "3", True]


def test_default_env_and_configure(monkeypatch):
    assert lx.configure() == {"max_sessions": DEFAULT_MAX_SESSIONS}
    monkeypatch.setenv(MAX_SESSIONS_ENV, "6")
    assert lx.configure() == {"max_sessions": 6}
    assert lx.configure(max_sessions=2) == {"max_sessions": 2}, "configure() wins over the environment"
    assert lx.configure(max_sessions=None) == {"max_sessions": 6}


@pytest.mark.parametrize("value", BAD)
def test_bad_values_are_refused_like_the_servers_traitlet(value):
    from jupyter_server_ext.app import LoquilexApp

    with pytest.raises(ValueError, match="max_sessions must be a whole number >= 1"):
        lx.configure(max_sessions=value)
    with pytest.raises(TraitError, match="max_sessions.*(must be a whole number >= 1|expected an int)"):
        LoquilexApp(max_sessions=value)
    assert lx.configure() == {"max_sessions": DEFAULT_MAX_SESSIONS}


@pytest.mark.parametrize("raw", ["0", "two", "1.5"])
def test_a_bad_environment_value_fails_before_any_process_starts(monkeypatch, raw):
    monkeypatch.setenv(MAX_SESSIONS_ENV, raw)
    s = lx.session(lx.PushSource())
    with pytest.raises(ValueError, match=f"{MAX_SESSIONS_ENV} must be a whole number >= 1"):
        s.start()
    assert RUNTIME.supervisor is None
    s.close()


def test_the_limit_applies_to_a_running_supervisor():
    lx.configure(max_sessions=1)
    with lx.session(lx.PushSource()) as first:
        assert RUNTIME.supervisor.max_sessions == 1
        with pytest.raises(lx.SessionLimitError, match="the limit is 1"):
            lx.session(lx.PushSource()).start()
        lx.configure(max_sessions=2)
        with lx.session(lx.PushSource()) as second:
            assert first.status in ("starting", "running") and second.status in ("starting", "running")
