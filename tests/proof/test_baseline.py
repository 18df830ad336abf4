"""`loquilex_nb.testing.baseline`: a kernel subshell or a client connection made by the frontend is not a leak; ours still are.

A real ipykernel (7+) gets a `create_subshell_request` on its control channel, as JupyterLab
sends one for each comm target (`commsOverSubshells: perCommTarget`). The subshell's thread,
event loop and zmq sockets appear after the notebook's baseline and stay; `Baseline.check()`
must pass with them, and must still fail on a thread or a socket the notebook itself left open.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.proof.test_kernel_hooks import execute, run

ipykernel = pytest.importorskip("ipykernel")
if int(ipykernel.__version__.split(".")[0]) < 7:
    pytest.skip("subshells need ipykernel 7", allow_module_level=True)

BASELINE = "from loquilex_nb.testing.baseline import Baseline\nbase = Baseline()\nprint(base)"
CHECK = """
try:
    base.check(timeout={timeout})
    print('RESULT: same')
except AssertionError as exc:
    print('RESULT: grown', exc)
"""


async def control(kc, msg_type: str) -> dict:
    msg = kc.session.msg(msg_type, {})
    kc.control_channel.send(msg)
    while True:
        reply = await kc.control_channel.get_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
            assert reply["content"]["status"] == "ok", reply["content"]
            return reply["content"]


@pytest.mark.leak_settle(10)
def test_a_frontend_subshell_is_not_a_leak_but_our_thread_and_socket_are(tmp_path):
    async def scenario(kernel):
        kc = kernel.kc
        # as JupyterLab does on connecting; the control thread's first reply opens its iopub pipe
        await control(kc, "kernel_info_request")
        await execute(kc, BASELINE)
        subshell = (await control(kc, "create_subshell_request"))["subshell_id"]
        grown = await execute(kc, "from loquilex_nb.core.resources import process_counters\n"
                                  "now = process_counters(); b = base.counters\n"
                                  "print(now.threads - b.threads, now.fds - b.fds, now.sockets - b.sockets)")
        threads, fds, sockets = map(int, grown.split())
        assert threads >= 1 and fds >= 1 and sockets >= 1, grown  # the subshell is really there
        assert f"subshell-{subshell}" in await execute(kc, "import threading; print([t.name for t in threading.enumerate()])")
        assert "RESULT: same" in await execute(kc, CHECK.format(timeout=5))
        # a second client connecting to the kernel's ports (the server does, after a websocket
        # reconnect) adds TCP connections in the kernel: the frontend's too
        from jupyter_client.asynchronous import AsyncKernelClient

        second = AsyncKernelClient()
        second.load_connection_info(kc.get_connection_info(session=True))
        count = "print(process_counters().sockets)"
        before = int(await execute(kc, count))
        second.start_channels()
        try:
            for _ in range(100):  # zmq connects in the background
                if int(await execute(kc, count)) > before:
                    break
                await asyncio.sleep(0.1)
            assert int(await execute(kc, count)) > before  # the connections are really there
            assert "RESULT: same" in await execute(kc, CHECK.format(timeout=5))
        finally:
            second.stop_channels()
        # ours still count: a socket, then a thread
        await execute(kc, "import socket; leaked = socket.socket()")
        assert "RESULT: grown" in await execute(kc, CHECK.format(timeout=0.5))
        await execute(kc, "leaked.close()")
        assert "RESULT: same" in await execute(kc, CHECK.format(timeout=5))
        await execute(kc, "import threading; ev = threading.Event(); t = threading.Thread(target=ev.wait); t.start()")
        assert "RESULT: grown" in await execute(kc, CHECK.format(timeout=0.5))
        await execute(kc, "ev.set(); t.join()")
        assert "RESULT: same" in await execute(kc, CHECK.format(timeout=5))

    run(scenario, tmp_path)
