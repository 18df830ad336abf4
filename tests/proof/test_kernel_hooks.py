"""Embedded sessions inside a real ipykernel end with the kernel, however the kernel ends.

A kernel started by `jupyter_client.AsyncKernelManager` (with ``LOQUILEX_MODE=embedded``)
starts two push sessions. Then:

* a shutdown request (``shutdown_kernel(now=False)``) and a restart (``restart_kernel(now=False)``)
  make ipykernel stop its loop and return from main; interpreter exit runs the runtime's
  ``threading._register_atexit`` hook, which stops the sessions and reaps the workers before
  the kernel process is gone. So the workers are gone (reaped, no zombie) as soon as the
  call returns, and the kernel exited by itself (code 0) rather than being killed;
* a kernel killed outright (SIGKILL) runs nothing: the workers' parent-death signal
  (``PR_SET_PDEATHSIG``) takes them down within a couple of seconds.

The kernel also records, from a plain ``atexit`` hook (which runs after threading's exit
hooks), how its sessions had ended: proof that they were stopped by the kernel itself and
not by a signal after the fact.

jupyter_client's sync managers park an event loop (and its fds) on the calling thread for
good, so the async classes run inside ``asyncio.run``, which closes everything it opened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import psutil
import pytest

from tests.helpers import gone

pytest.importorskip("ipykernel")
from jupyter_client import AsyncKernelManager  # noqa: E402

START_TIMEOUT = 60.0

KERNEL_CODE = """
import atexit, json, os, time
import loquilex_nb as lx

_lx_root, _lx_evidence = {root!r}, {evidence!r}
assert lx.backends.default_backend() is lx.EMBEDDED, lx.backends.default_backend()
_lx_sessions = [lx.session(lx.PushSource(), output_root=_lx_root).start() for _ in range(2)]
_deadline = time.monotonic() + 60
while any(s.status != "running" for s in _lx_sessions):
    assert time.monotonic() < _deadline, [s.status for s in _lx_sessions]
    time.sleep(0.02)


@atexit.register  # atexit runs after threading's exit hooks (where the runtime stops sessions)
def _lx_record():
    with open(_lx_evidence, "w") as f:
        json.dump({{"status": [s.status for s in _lx_sessions], "end": [s.end and s.end.kind for s in _lx_sessions]}}, f)


print(json.dumps({{"kernel": os.getpid(), "workers": [s.pid for s in _lx_sessions]}}))
"""


def reaped(pid: int) -> bool:
    """No such process at all: exited *and* waited for (a zombie does not count)."""
    try:
        psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    return False


def check_reaped(pids: list[int], report: str | None = None) -> None:
    """Assert every pid is reaped; a failure SIGKILLs the survivors so no orphan outlives the test."""
    left = [p for p in pids if not reaped(p)]
    report = report or str([describe(p) for p in left])
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, report


def describe(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"pid {pid} status={p.status()} ppid={p.ppid()}"
    except psutil.NoSuchProcess:
        return f"pid {pid} gone"


async def execute(kc, code: str, timeout: float = START_TIMEOUT) -> str:
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        kind = msg["msg_type"]
        if kind == "stream" and msg["content"]["name"] == "stdout":
            out.append(msg["content"]["text"])
        elif kind == "error":
            errors.append("\n".join(msg["content"]["traceback"]))

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok", "\n".join(errors) or reply["content"]
    return "".join(out)


class Kernel:
    """One AsyncKernelManager (+ client) whose every resource is released by close()."""

    def __init__(self, tmp_path) -> None:
        self.tmp = tmp_path
        self.km = AsyncKernelManager(kernel_name="python3")
        self.kc = None
        self.generation = 0

    async def start(self) -> None:
        env = dict(os.environ, LOQUILEX_MODE="embedded", HF_HUB_OFFLINE="1")
        await self.km.start_kernel(env=env, cwd=str(self.tmp))
        await self.connect()

    async def connect(self) -> None:
        await self.disconnect()
        self.kc = self.km.client()
        self.kc.start_channels(hb=False)  # the heartbeat channel is a thread; not needed
        await self.kc.wait_for_ready(timeout=START_TIMEOUT)

    async def disconnect(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
            self.kc = None

    @property
    def process(self):
        return self.km.provisioner.process if self.km.provisioner is not None else None

    async def start_sessions(self) -> tuple[int, list[int], str]:
        """Two running embedded push sessions in the kernel: (kernel pid, worker pids, evidence file)."""
        self.generation += 1
        evidence = str(self.tmp / f"evidence-{self.generation}.json")
        code = KERNEL_CODE.format(root=str(self.tmp / "captions"), evidence=evidence)
        info = json.loads((await execute(self.kc, code)).strip().splitlines()[-1])
        workers = info["workers"]
        assert len(set(workers)) == 2 and all(psutil.pid_exists(p) for p in workers)
        kernel = psutil.Process(info["kernel"])
        # the kernel's children, each in its own process group (so signals jupyter_client
        # sends to the kernel's process group never reach them)
        assert {c.pid for c in kernel.children()} >= set(workers)
        assert all(os.getpgid(p) == p for p in workers)
        return info["kernel"], workers, evidence

    async def close(self) -> None:
        await self.disconnect()
        try:
            if self.km.has_kernel:
                await self.km.shutdown_kernel(now=True)
        finally:
            # a no-op for what shutdown_kernel already released; frees the zmq context
            await self.km.cleanup_resources()


def run(scenario, tmp_path):
    async def main():
        kernel = Kernel(tmp_path)
        try:
            await kernel.start()
            await scenario(kernel)
        finally:
            await kernel.close()

    asyncio.run(main())


def read_evidence(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


@pytest.mark.leak_settle(10)
def test_shutdown_request_stops_the_sessions(tmp_path):
    async def scenario(kernel: Kernel):
        kpid, workers, evidence = await kernel.start_sessions()
        proc = kernel.process
        await kernel.disconnect()
        await kernel.km.shutdown_kernel(now=False)
        # the kernel reaped its workers on the way out: nothing left, not even a zombie
        check_reaped(workers, f"kernel exit code {proc.returncode}, workers {[describe(p) for p in workers]}")
        # and it left by itself: jupyter_client did not have to terminate or kill it
        assert proc.returncode == 0, f"kernel exit code {proc.returncode}"
        assert not psutil.pid_exists(kpid)
        assert read_evidence(evidence) == {"status": ["stopped", "stopped"], "end": ["clean", "clean"]}

    run(scenario, tmp_path)


@pytest.mark.leak_settle(10)
def test_restart_stops_the_old_kernels_sessions(tmp_path):
    async def scenario(kernel: Kernel):
        kpid, workers, evidence = await kernel.start_sessions()
        old = kernel.process
        await kernel.km.restart_kernel(now=False)
        check_reaped(workers, f"old kernel exit code {old.returncode}, workers {[describe(p) for p in workers]}")
        assert old.returncode == 0, f"old kernel exit code {old.returncode}"
        assert kernel.process is not old and kernel.process.pid != kpid
        assert read_evidence(evidence) == {"status": ["stopped", "stopped"], "end": ["clean", "clean"]}
        # the new kernel works and starts afresh: new sessions, new workers
        await kernel.connect()
        kpid2, workers2, _ = await kernel.start_sessions()
        assert kpid2 != kpid and not set(workers2) & set(workers)
        new = kernel.process
        await kernel.disconnect()
        await kernel.km.shutdown_kernel(now=False)
        check_reaped(workers2, f"new kernel exit code {new.returncode}, workers {[describe(p) for p in workers2]}")
        assert new.returncode == 0, f"new kernel exit code {new.returncode}"

    run(scenario, tmp_path)


@pytest.mark.leak_settle(10)
def test_sigkill_of_the_kernel_takes_its_workers(tmp_path):
    async def scenario(kernel: Kernel):
        kpid, workers, evidence = await kernel.start_sessions()
        await kernel.disconnect()
        # as the dying kernel's threads exit one by one, Linux hands each worker to the next
        # live thread and sends the parent-death signal again: a worker gets a burst of SIGTERMs
        os.kill(kpid, signal.SIGKILL)
        t0 = time.monotonic()
        await kernel.km.provisioner.wait()  # reap the kernel
        survivors = [p for p in workers if not gone(p, max(0.01, 2.0 - (time.monotonic() - t0)))]
        report = f"workers outlived a SIGKILLed kernel by {time.monotonic() - t0:.1f} s: {[describe(p) for p in survivors]}"
        check_reaped(survivors, report)  # a failure kills them: no orphan may outlive the test
        assert not os.path.exists(evidence)  # nothing ran in the kernel: the signal did it

    run(scenario, tmp_path)
