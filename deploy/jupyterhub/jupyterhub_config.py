"""A local JupyterHub whose users caption with loquilex-nb (see the README, "JupyterHub").

    cd deploy/jupyterhub && ../../.venv/bin/jupyterhub -f jupyterhub_config.py

One single-user server per user, spawned as local processes (SimpleLocalProcessSpawner:
no system accounts; use LocalProcessSpawner or SystemdSpawner for real isolation), a
test-only DummyAuthenticator, the proxy installed by `make install` into node_modules
here. Everything listens on 127.0.0.1. The tests and `make bench` load this file and
change only ports, users and timings (tests/hub/test_jupyterhub.py, bench/hub.py).
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
env = os.environ.get

c = get_config()  # noqa: F821 (jupyterhub's config loader provides it)

# -- where the hub listens: everything on loopback ---------------------------------------------
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(env("LOQUILEX_HUB_PORT", "8000"))
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(env("LOQUILEX_HUB_API_PORT", "8081"))
c.JupyterHub.base_url = env("LOQUILEX_HUB_BASE_URL", "/")
c.ConfigurableHTTPProxy.command = [str(HERE / "node_modules" / ".bin" / "configurable-http-proxy")]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(env('LOQUILEX_HUB_PROXY_API_PORT', '8001'))}"

# -- users ---------------------------------------------------------------------------------
c.JupyterHub.authenticator_class = "dummy"  # any password; for trying things out only
c.Authenticator.allowed_users = {"alice", "bob"}
c.JupyterHub.allow_named_servers = True  # /user/<name>/<server>/ works like /user/<name>/

# -- the single-user servers ---------------------------------------------------------------
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = env("LOQUILEX_HUB_HOMES", "/tmp/loquilex-hub") + "/{username}"
# the Python this hub runs under has loquilex-nb and its server extension installed
c.Spawner.cmd = [sys.executable, "-m", "jupyterhub.singleuser"]
c.Spawner.args = ["--allow-root"] if os.geteuid() == 0 else []
c.Spawner.environment = {"HF_HUB_OFFLINE": "1"}  # the model ships with the package
# A hub stop (or the idle culler) sends SIGINT, then SIGTERM after interrupt_timeout. The
# extension's stop asks each worker to finish its utterance (stop_grace), then SIGTERM
# (term_grace); a busy shared machine needs more than the interactive 3 s default to end
# sessions clean, and the whole stop (stop_timeout) must fit in interrupt_timeout.
c.Spawner.args += ["--LoquilexApp.stop_grace=8", "--LoquilexApp.stop_timeout=15"]
c.Spawner.interrupt_timeout = 20
# Captions land in each user's home: <home>/loquilex-captions/<session>/ (root_dir is home).
# Idle culling counts captioning as activity; an open session that hears nothing counts
# only with this set to True (the default is False):
# c.Spawner.args += ["--LoquilexApp.idle_sessions_keep_alive=True"]
