"""REST helpers of the server tests (pytest-jupyter's `jp_fetch`)."""

import asyncio
import json
import time


async def post_session(jp_fetch, body):
    r = await jp_fetch("loquilex", "api", "sessions", method="POST", body=json.dumps(body))
    assert r.code == 201
    return json.loads(r.body)


async def wait_ended(jp_fetch, sid, timeout):
    """The session's info once it has ended (polled; the server runs on this loop)."""
    deadline = time.monotonic() + timeout
    while True:
        info = json.loads((await jp_fetch("loquilex", "api", "sessions", sid)).body)
        if info["end"] is not None:
            return info
        assert time.monotonic() < deadline, f"session {sid} still {info['state']} after {timeout} s"
        await asyncio.sleep(0.05)
