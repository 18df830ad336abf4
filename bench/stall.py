"""Section 3b of bench/run.py: server memory with one stalled WebSocket client.

A stalled client connects, sends `hello` and never reads again, while a file session
produces events. The server's per-connection send queue is bounded (`send_queue_limit`);
when it is full the client is cut off with close code 4008. We sample the jupyter server's
RSS every second and watch the stalled connection's server-side socket to see when it goes.

The stalled client is a raw socket with a small receive buffer (`SO_RCVBUF`), so the kernel
does not absorb megabytes on its behalf and the server's queue fills within the run.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Callable

import psutil
from measure import summary

RCVBUF = 4096
MSS = 1460  # an Ethernet-sized segment: over loopback (MSS 64 KiB) the kernel would buffer ~3 MB for the stalled client
CUT_CLOSE_WAIT_S = 5.0  # tornado waits this long for the peer's close frame, then aborts


class StalledClient:
    """A WebSocket client that sends hello and then never reads (until `drain()`)."""

    def __init__(self, port: int, path: str, token: str, rcvbuf: int = RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, MSS)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        self.local_port = self.sock.getsockname()[1]
        key = base64.b64encode(os.urandom(16)).decode()
        req = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: token {token}\r\n\r\n"
        )
        self.sock.sendall(req.encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"stalled client: connection closed during the handshake: {buf[:200]!r}")
            buf += chunk
        head, self.rest = buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"stalled client: upgrade refused: {head[:200]!r}")
        self.send_text(json.dumps({"type": "hello", "last_seq": 0}))

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def drain(self, timeout: float = 3.0) -> dict:
        """Read whatever reached us, until EOF or `timeout` of silence; parse the frames."""
        self.sock.settimeout(timeout)
        buf = self.rest
        eof = False
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except (socket.timeout, TimeoutError):
                break
            except OSError:
                eof = True
                break
            if not chunk:
                eof = True
                break
            buf += chunk
        frames, close_code, types, last_seq, token, seqs = 0, None, {}, 0, None, []
        i = 0
        while i + 2 <= len(buf):
            op = buf[i] & 0x0F
            n = buf[i + 1] & 0x7F
            j = i + 2
            if n == 126:
                if j + 2 > len(buf):
                    break
                n = struct.unpack(">H", buf[j : j + 2])[0]
                j += 2
            elif n == 127:
                if j + 8 > len(buf):
                    break
                n = struct.unpack(">Q", buf[j : j + 8])[0]
                j += 8
            if j + n > len(buf):
                break  # a frame cut short by the abort
            payload = buf[j : j + n]
            i = j + n
            if op == 0x8:
                close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                continue
            if op == 0x1:
                frames += 1
                try:
                    env = json.loads(payload)
                    types[env["type"]] = types.get(env["type"], 0) + 1
                    if env.get("seq"):
                        seqs.append(env["seq"])
                        last_seq = max(last_seq, env["seq"])
                    if env["type"] == "welcome":
                        token = env["data"]["resume_token"]
                except ValueError:
                    pass
        return {"frames": frames, "bytes": len(buf), "types": types, "last_seq": last_seq, "close_code": close_code, "eof": eof, "trailing_bytes": len(buf) - i, "resume_token": token, "seqs": seqs}

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def server_socket_of(pid: int, server_port: int, client_port: int) -> bool:
    """Does the server process still hold the socket of the client at 127.0.0.1:client_port?"""
    try:
        for c in psutil.Process(pid).net_connections(kind="tcp"):
            if c.raddr and c.raddr.port == client_port and c.laddr and c.laddr.port == server_port:
                return True
    except psutil.Error:
        return False
    return False


async def session_log(srv, sid: str) -> dict[int, str]:
    """seq -> type of every event the server still holds for an ended session (a late joiner's replay)."""
    ws = await srv.ws(sid)
    await ws.write_message(json.dumps({"type": "hello", "last_seq": 0}))
    out: dict[int, str] = {}
    while True:
        msg = await asyncio.wait_for(ws.read_message(), 30)
        if msg is None:
            break
        env = json.loads(msg)
        if env.get("seq"):
            out[env["seq"]] = env["type"]
        if env["type"] == "eos":
            break
    ws.close()
    return out


def lost(received: list[int], log: dict[int, str]) -> dict:
    """Against the session's log: events never received (lost) and partials superseded while queued.

    The server replaces a queued partial by a newer one of the same utterance (latest wins),
    so a client that falls behind skips partials by design; every other event must arrive.
    """
    got = set(received)
    missing = [s for s in log if s not in got]
    return {
        "expected": len(log), "received": len(received), "duplicates": len(received) - len(got),
        "in_order": received == sorted(got),
        "lost": sum(1 for s in missing if log[s] != "asr.partial"),
        "partials_superseded": sum(1 for s in missing if log[s] == "asr.partial"),
    }


async def resume(srv, sid: str, last_seq: int, token: str | None) -> dict:
    """Reconnect with hello {last_seq, resume_token}; read until eos."""
    ws = await srv.ws(sid)
    t0 = time.monotonic()
    await ws.write_message(json.dumps({"type": "hello", "last_seq": last_seq, "resume_token": token}))
    seqs, gaps, close = [], 0, None
    while True:
        msg = await asyncio.wait_for(ws.read_message(), 30)
        if msg is None:
            close = ws.close_code
            break
        env = json.loads(msg)
        if env["type"] == "gap":
            gaps += 1
        if env.get("seq"):
            seqs.append(env["seq"])
        if env["type"] == "eos":
            msg = await asyncio.wait_for(ws.read_message(), 5)
            close = ws.close_code if msg is None else "open after eos"
            break
    ws.close()
    return {"seqs": seqs, "gaps": gaps, "close": close, "took_s": round(time.monotonic() - t0, 3)}


async def read_all_events(srv, sid: str) -> dict:
    ws = await srv.ws(sid)
    await ws.write_message(json.dumps({"type": "hello", "last_seq": 0}))
    seqs, n_bytes, close = [], 0, None
    t_first = None
    t_seq: dict[int, float] = {}
    while True:
        msg = await ws.read_message()
        if msg is None:
            close = ws.close_code
            break
        n_bytes += len(msg)
        env = json.loads(msg)
        if env.get("seq"):
            seqs.append(env["seq"])
            t_seq[env["seq"]] = time.monotonic()
            t_first = t_first or time.monotonic()
        if env["type"] == "eos":
            msg = await asyncio.wait_for(ws.read_message(), 5)
            close = ws.close_code if msg is None else "open after eos"
            break
    ws.close()
    return {"events": len(seqs), "seqs": seqs, "last_seq": max(seqs, default=0), "bytes": n_bytes, "close": close, "t_end": time.monotonic(), "t_first": t_first, "t_seq": t_seq}


async def run_stall(srv, wav: str, seconds: float, stalled: bool, log: Callable[[str], None], settle_to: Callable, counters: Callable) -> dict:
    """One run: a non-realtime file session, one healthy reader, and (if `stalled`) a stalled client."""
    pid = srv.proc.pid
    proc = psutil.Process(pid)
    await asyncio.sleep(1.0)
    base = counters(await srv.resources())
    rss0 = proc.memory_info().rss
    t0 = time.monotonic()
    info = await srv.api("POST", "sessions", {"source": {"kind": "file", "path": wav, "realtime": False}, "partial_interval": 0.1, "formats": ["txt"]})
    sid = info["id"]
    client = None
    if stalled:
        client = await asyncio.get_running_loop().run_in_executor(None, lambda: StalledClient(srv.port, f"/loquilex/api/sessions/{sid}/events", srv.token))
    reader = asyncio.create_task(read_all_events(srv, sid))
    samples, watch = [], []
    released_at = None
    next_rss = 0.0
    try:
        while True:
            now = time.monotonic() - t0
            if now >= seconds:
                break
            if now >= next_rss:
                mem = proc.memory_info().rss
                samples.append({"t_s": round(now, 2), "rss": mem, "fds": proc.num_fds()})
                next_rss += 1.0
            if client is not None and released_at is None:
                held = server_socket_of(pid, srv.port, client.local_port)
                watch.append(held)
                if not held:
                    released_at = now
                    log(f"  stalled client's socket released by the server at {now:.1f} s")
            await asyncio.sleep(0.1)
        # on a slow machine the cut may come after the sampling window: keep watching the socket
        # until the session is over and tornado's 5 s close wait has passed
        settle_until = None
        while client is not None and released_at is None:
            if reader.done() and settle_until is None:
                settle_until = time.monotonic() + CUT_CLOSE_WAIT_S + 2.0
            if settle_until is not None and time.monotonic() > settle_until:
                break
            if not server_socket_of(pid, srv.port, client.local_port):
                released_at = time.monotonic() - t0
                log(f"  stalled client's socket released by the server at {released_at:.1f} s (after the sampling window)")
            await asyncio.sleep(0.1)
        healthy = await asyncio.wait_for(reader, 120)
    finally:
        reader.cancel()
    ended = await srv.wait_ended(sid)
    log_types = await session_log(srv, sid)
    drained = resumed = None
    if client is not None:
        drained = await asyncio.get_running_loop().run_in_executor(None, client.drain)
        client.close()
        if "eos" in drained["types"]:
            resumed = {"seqs": [], "gaps": 0, "close": "not needed (it had everything)", "took_s": 0.0}
        else:
            # the stalled client wakes up and resumes where its last complete frame left off
            resumed = await resume(srv, sid, drained["last_seq"], drained["resume_token"])
    after, settle_s, back = await settle_to(srv, base)
    rss = [s["rss"] for s in samples]
    out = {
        "stalled_client": stalled,
        "session": {"id": sid, "events": ended["last_seq"], "finals": ended["finals"], "end": ended["end"]["kind"]},
        "healthy_client": {"events": healthy["events"], "bytes": healthy["bytes"], "close": healthy["close"], **lost(healthy["seqs"], log_types), "done_at_s": round(healthy["t_end"] - t0, 2)},
        "events_published_at_s": [[round(healthy["t_seq"][q] - t0, 2), q] for q in sorted(healthy["t_seq"])][:: max(1, len(healthy["t_seq"]) // 200)],
        "rss_before": rss0,
        "rss_max": max(rss, default=rss0),
        "rss_end": rss[-1] if rss else rss0,
        "rss_growth": (rss[-1] - rss0) if rss else 0,
        "rss_curve": samples,
        "baseline": base,
        "after": after,
        "back_to_baseline": back,
        "settle_s": round(settle_s, 2),
        "residual": {k: after[k] - base[k] for k in ("fds", "sockets", "tasks", "threads", "children") if after.get(k) is not None and base.get(k) is not None},
    }
    if client is not None:
        view = {k: v for k, v in drained.items() if k not in ("seqs", "resume_token")}
        both = drained["seqs"] + resumed["seqs"]
        out["cut"] = {
            "socket_released_at_s": None if released_at is None else round(released_at, 2),
            "overflow_at_s_estimate": None if released_at is None else round(max(0.0, released_at - CUT_CLOSE_WAIT_S), 2),
            "cut_before_eos": "eos" not in drained["types"] and drained["close_code"] in (None, 4008),
            "stalled_last_seq_published_at_s": None if drained["last_seq"] not in healthy["t_seq"] else round(healthy["t_seq"][drained["last_seq"]] - t0, 2),
            "client_view": view,
            "client_saw_4008": drained["close_code"] == 4008,
            "resumed": {"events": len(resumed["seqs"]), "gap_messages": resumed["gaps"], "close": resumed["close"], "took_s": resumed["took_s"]},
            "stalled_client_total": lost(both, log_types),
        }
    return out


async def bench_stall(srv, seconds: float, parts: list[Path], control: bool, log: Callable[[str], None], settle_to: Callable, counters: Callable, concat_wav: Callable) -> dict:
    audio_s = concat_wav(srv.root / "stall.wav", parts)
    limit = srv.extra.get("send_queue_limit")
    log(f"  stalled client: {audio_s:.0f} s of audio, send_queue_limit={limit}, sampling {seconds:.0f} s")
    runs = {"stalled": await run_stall(srv, "stall.wav", seconds, True, log, settle_to, counters)}
    if control:
        log("  the same without the stalled client (control)")
        runs["control"] = await run_stall(srv, "stall.wav", seconds, False, log, settle_to, counters)
    s = runs["stalled"]
    out = {
        "send_queue_limit": limit,
        "audio_s": round(audio_s, 1),
        "seconds": seconds,
        "rcvbuf": RCVBUF,
        "runs": runs,
        "rss_growth_mib": round(s["rss_growth"] / 2**20, 2),
        "rss_max_minus_start_mib": round((s["rss_max"] - s["rss_before"]) / 2**20, 2),
    }
    if "control" in runs:
        c = runs["control"]
        out["control_rss_growth_mib"] = round(c["rss_growth"] / 2**20, 2)
        out["rss_growth_minus_control_mib"] = round((s["rss_growth"] - c["rss_growth"]) / 2**20, 2)
        out["rss_end_ratio_vs_control"] = s["rss_end"] / c["rss_end"] if c["rss_end"] else None
    out["rss_summary_mib"] = summary([x["rss"] / 2**20 for x in s["rss_curve"]])
    return out
