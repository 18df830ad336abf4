"""Under JupyterHub, SIGINT stops the server through jupyter_server's own stop path.

A hub's local spawners stop a single-user server with SIGINT first. jupyter_server installs
its SIGINT handler only when stdin is a tty, and jupyterhub's singleuser *extension* (the
default with jupyter_server 2) does not take SIGINT either, so the server would die of
KeyboardInterrupt without running any extension's `stop_extension`. jupyterhub's
singleuser app subclass answers this with `_handle_sigint = _signal_stop`
(jupyterhub/jupyterhub#4864); we do the same, only under a hub, and only when nobody but
jupyter_server (or nobody at all) has claimed SIGINT. A plain server keeps its behaviour.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

HUB_ENV = ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_SERVICE_PREFIX")


def under_hub(serverapp: Any) -> bool:
    """A JupyterHub single-user server: the spawner's environment and the hub's identity provider."""
    if not all(os.environ.get(k) for k in HUB_ENV):
        return False
    provider = getattr(serverapp, "identity_provider", None)
    return type(provider).__module__.split(".")[0] == "jupyterhub"


def route_sigint_to_stop(serverapp: Any, log: Any) -> bool:
    """Make SIGINT call `serverapp._signal_stop` under a hub; True when it did."""
    if not under_hub(serverapp) or threading.current_thread() is not threading.main_thread():
        return False
    current = signal.getsignal(signal.SIGINT)
    ours = (signal.default_int_handler, getattr(serverapp, "_handle_sigint", None))
    if current not in ours:
        return False  # someone configured their own handler: leave it
    signal.signal(signal.SIGINT, serverapp._signal_stop)
    log.info("loquilex: JupyterHub single-user server, SIGINT now stops the server cleanly")
    return True
