"""Find the Jupyter server this kernel belongs to, if it runs the loquilex extension.

Everything here is synchronous and runs once, in the kernel's own thread (never on the
private loop). Outside a kernel it answers None without touching the network.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHECK_TIMEOUT = 2.0
_KERNEL_FILE = re.compile(r"^kernel-(?P<id>.+)\.json$")
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def mode_forced_embedded() -> bool:
    return os.environ.get("LOQUILEX_MODE", "").strip().lower() == "embedded"


def parent_server_pid() -> int | None:
    """The pid of the Jupyter server that launched this kernel (jupyter_client sets it)."""
    try:
        return int(os.environ["JPY_PARENT_PID"])
    except (KeyError, ValueError):
        return None


def connection_file() -> str | None:
    """This kernel's connection file, or None outside a kernel."""
    # only a kernel has ipykernel imported already; importing it here would cost seconds
    if "ipykernel" in sys.modules:
        try:
            from ipykernel.kernelapp import IPKernelApp

            if IPKernelApp.initialized():
                from ipykernel import get_connection_file

                return get_connection_file()
        except Exception:
            pass
    # a kernel whose app object is out of reach still names its file on its command line;
    # never glob for the newest kernel-*.json: that can be another kernel's file
    name = _argv_connection_file(sys.argv)
    if name is None:
        return None
    try:
        from jupyter_client import find_connection_file

        return find_connection_file(name)
    except Exception:
        return name


def _argv_connection_file(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv[1:], 1):
        if arg in ("-f", "--f") and i + 1 < len(argv):
            name = argv[i + 1]
        elif arg.startswith("--f="):
            name = arg[4:]
        else:
            continue
        return name if _KERNEL_FILE.match(Path(name).name) else None
    return None


def kernel_id() -> str | None:
    path = connection_file()
    match = _KERNEL_FILE.match(Path(path).name) if path else None
    return match.group("id") if match else None


def running_servers() -> list[dict[str, Any]]:
    """The jpserver-*.json files of the runtime dir, like jupyter_server's list_running_servers.

    Read directly: importing jupyter_server.serverapp takes over a second, and
    list_running_servers deletes the files of servers it believes dead.
    """
    try:
        from jupyter_core.paths import jupyter_runtime_dir
    except ImportError:
        return []
    out = []
    try:
        files = sorted(Path(jupyter_runtime_dir()).glob("jpserver-*.json"))
    except OSError:
        return []
    for path in files:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written, or not ours to judge
        if isinstance(info, dict) and isinstance(info.get("url"), str):
            out.append(info)
    return out


def has_extension(url: str, token: str | None, timeout: float = CHECK_TIMEOUT) -> bool:
    """True when `GET {url}loquilex/api/sessions` answers 200."""
    if urlsplit(url).scheme not in ("http", "https"):
        return False  # e.g. http+unix://, which urllib cannot speak
    req = urllib.request.Request(url.rstrip("/") + "/loquilex/api/sessions")
    if token:
        req.add_header("Authorization", f"token {token}")
    # the server is local: a proxy from the environment must not intercept the request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def find_server(timeout: float = CHECK_TIMEOUT) -> dict[str, Any] | None:
    """The info dict (url, token, root_dir, pid, …) of our parent server with the extension."""
    if mode_forced_embedded():
        return None
    pid = parent_server_pid()
    if pid is None:
        return None
    for info in running_servers():
        if info.get("pid") == pid:
            return info if has_extension(info["url"], info.get("token"), timeout) else None
    return None


def same_url(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    host_a, host_b = (pa.hostname or "").lower(), (pb.hostname or "").lower()
    same_host = host_a == host_b or (host_a in _LOOPBACK and host_b in _LOOPBACK)
    return (
        pa.scheme == pb.scheme and same_host and pa.port == pb.port
        and pa.path.rstrip("/") == pb.path.rstrip("/")
    )


def server_for_url(url: str) -> dict[str, Any] | None:
    """The local server info for `url`, to fill in a token and root_dir the user left out."""
    for info in running_servers():
        if same_url(info["url"], url):
            return info
    return None
