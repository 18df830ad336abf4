"""A JupyterHub on 127.0.0.1 for the tests and the benchmarks, driven over its REST API.

It loads jupyterhub_config.py beside this file and changes only what a test must: free
ports, a base_url, the users, an API token for itself, faster activity reports, per-user
arguments. Every process it starts descends from the hub and is accounted for by `stop()`.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "jupyterhub_config.py"
CHP = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
# urllib must never go through a proxy from the environment: the hub is on loopback
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

TWIN = """\
load_subconfig({config!r})
c.JupyterHub.base_url = {base_url!r}
c.Authenticator.allowed_users = set({users!r})
c.JupyterHub.services = [{{"name": "loquilex-tests", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": ["loquilex-tests"]}}]
c.JupyterHub.db_url = "sqlite:///" + {db!r}
c.JupyterHub.cookie_secret_file = {secret!r}
c.ConfigurableHTTPProxy.pid_file = {pidfile!r}
c.Spawner.environment.update({environment!r})
c.Spawner.args += {args!r}
_per_user = {per_user!r}

def _pre_spawn(spawner):
    spawner.args = list(spawner.args) + _per_user.get(spawner.user.name, [])

c.Spawner.pre_spawn_hook = _pre_spawn
# a shared, busy machine can take minutes to start a server: slow is not broken here
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 300
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalHub:
    def __init__(
        self,
        workdir: Path,
        users: list[str],
        *,
        base_url: str = "/lx/",
        args: list[str] | None = None,
        per_user: dict[str, list[str]] | None = None,
        environment: dict[str, str] | None = None,
    ) -> None:
        self.dir = Path(workdir)
        self.users = list(users)
        self.base_url = base_url
        self.args = list(args or [])
        self.per_user = dict(per_user or {})
        self.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": "2", **(environment or {})}
        self.port, self.api_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.token = secrets.token_hex(24)
        self.log_path = self.dir / "jupyterhub.log"
        self.proc: subprocess.Popen | None = None
        self._seen: dict[int, psutil.Process] = {}

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "LocalHub":
        if not CHP.exists():
            raise RuntimeError(f"{CHP} is missing: run `make install` (npm ci in deploy/jupyterhub)")
        self.dir.mkdir(parents=True, exist_ok=True)
        twin = self.dir / "jupyterhub_config.py"
        twin.write_text(TWIN.format(
            config=str(CONFIG), base_url=self.base_url, users=sorted(self.users), token=self.token,
            db=str(self.dir / "jupyterhub.sqlite"), secret=str(self.dir / "cookie_secret"),
            pidfile=str(self.dir / "proxy.pid"), environment=self.environment, args=self.args,
            per_user=self.per_user,
        ))
        env = dict(os.environ)
        env.update(
            LOQUILEX_HUB_PORT=str(self.port), LOQUILEX_HUB_API_PORT=str(self.api_port),
            LOQUILEX_HUB_PROXY_API_PORT=str(self.proxy_api_port), LOQUILEX_HUB_HOMES=str(self.dir / "home"),
            CONFIGPROXY_AUTH_TOKEN=secrets.token_hex(24),
        )
        with open(self.log_path, "ab") as log:
            # no tty on stdin, as under systemd or a container: the case that broke SIGINT
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(twin)], cwd=self.dir,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.api("GET", "")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the hub did not start:\n{self.log()}")
            time.sleep(0.2)
        for user in self.users:
            code, body = self.api("POST", f"users/{user}")
            assert code in (201, 409), (code, body)
        return self

    def stop(self, timeout: float = 60.0) -> float:
        """SIGTERM, as systemd or Kubernetes would; returns seconds until the hub exited."""
        t0 = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            self.remember()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        return time.monotonic() - t0

    def kill(self) -> None:
        """Whatever happened, leave nothing behind (and reap the hub)."""
        self.remember()
        for p in list(self._seen.values()):
            try:
                p.kill()
            except psutil.Error:
                pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)

    def log(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def log_without_polls(self, tail: int = 6000) -> str:
        lines = self.log(10**7).splitlines()
        return "\n".join(ln for ln in lines if f"GET {self.base_url}hub/api/users/" not in ln)[-tail:]

    # -- processes ------------------------------------------------------------------------
    def remember(self) -> list[psutil.Process]:
        """The hub's descendants now (proxy, servers, kernels, workers), also kept for kill()."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        try:
            procs = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        for p in procs:
            self._seen.setdefault(p.pid, p)
        return procs

    def survivors(self) -> list[psutil.Process]:
        """Of every descendant ever remembered, those still running (zombies count as gone)."""
        alive = []
        for p in self._seen.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.Error:
                pass
        return alive

    def server_process(self, user: str, name: str = "") -> psutil.Process:
        for p in self.remember():
            try:
                env = p.environ()
            except psutil.Error:
                continue
            if env.get("JUPYTERHUB_USER") == user and env.get("JUPYTERHUB_SERVER_NAME", "") == name and p.ppid() == self.proc.pid:
                return p
        raise LookupError(f"no server process for {user}/{name}")

    # -- REST -----------------------------------------------------------------------------
    def url(self, path: str = "", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{self.base_url}{path.lstrip('/')}"

    def request(self, method: str, path: str, token: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
        """One request through the proxy; JSON answers are decoded, others returned as text."""
        data = json.dumps(body).encode() if body is not None else (b"" if method in ("POST", "PUT") else None)
        req = urllib.request.Request(self.url(path), data=data, method=method, headers={"Authorization": f"token {token}"})
        try:
            with _OPENER.open(req, timeout=timeout) as r:
                return r.status, _decode(r.read(), r.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as e:
            with e:
                return e.code, _decode(e.read(), e.headers.get("Content-Type", ""))

    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.request(method, "hub/api/" + path, self.token, body)

    def prefix(self, user: str, name: str = "") -> str:
        """The server's path under base_url, e.g. user/alice/ or user/alice/talk/."""
        return f"user/{user}/" + (f"{name}/" if name else "")

    def server_path(self, user: str, name: str = "") -> str:
        return f"users/{user}/servers/{name}" if name else f"users/{user}/server"

    def spawn(self, user: str, name: str = "") -> None:
        code, body = self.api("POST", self.server_path(user, name))
        assert code in (201, 202), (code, body, self.log())

    def ready(self, user: str, name: str = "") -> bool:
        code, body = self.api("GET", f"users/{user}")
        assert code == 200, (code, body)
        server = (body.get("servers") or {}).get(name)
        return bool(server and server.get("ready"))

    def wait_ready(self, user: str, name: str = "", timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready(user, name):
            assert time.monotonic() < deadline, f"{user}/{name} did not become ready:\n{self.log_without_polls()}"
            time.sleep(0.2)

    def start_servers(self, *servers: tuple[str, str]) -> None:
        """Spawn several servers at once, then wait for all of them."""
        for user, name in servers:
            self.spawn(user, name)
        for user, name in servers:
            self.wait_ready(user, name)

    def server_running(self, user: str, name: str = "") -> bool:
        code, body = self.api("GET", f"users/{user}")
        assert code == 200, (code, body)
        return name in (body.get("servers") or {})

    def delete_server(self, user: str, name: str = "") -> None:
        code, body = self.api("DELETE", self.server_path(user, name))
        assert code in (202, 204), (code, body)

    def wait_stopped(self, user: str, name: str = "", timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.server_running(user, name):
            assert time.monotonic() < deadline, f"{user}/{name} did not stop:\n{self.log()}"
            time.sleep(0.1)

    def user_token(self, user: str) -> str:
        code, body = self.api("POST", f"users/{user}/tokens", {"note": "loquilex tests", "expires_in": 3600})
        assert code in (200, 201), (code, body)
        return body["token"]


def _decode(raw: bytes, ctype: str) -> Any:
    if "json" in ctype:
        try:
            return json.loads(raw or b"null")
        except ValueError:
            pass
    return raw.decode("utf-8", "replace")
