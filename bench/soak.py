"""`python -m bench.soak`: a bounded soak of one relay under people, churn and a few attackers.

1,000 chat.v1 clients in 50 rooms talk at human rates (a message every 5-25 s each); a fifth of
them keep leaving and coming back. Alongside, hostile clients do what issue 8 found: ping
floods without reading, padded `read` floods, slowloris handshakes and silent TCP sockets.
Every client connects from its own 127.0.0.x address (20 people per address), as people would;
the attackers run in a process of their own, so their busy loops cannot delay the people's.

It reports, for the clients that stayed the whole time, every message the relay acknowledged in
their room against what they received (they must be equal), delivery latency p99 and the
relay's RSS over time, and its open file descriptors before the first client and after the
last. Load runs on one CPU and the relay on the other (taskset), like the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import websockets

from bench.procstat import cpu_seconds, rss_kb
from bench.relays import RESULTS
from bench.runner import LOADGEN_CPU, RELAY_CPU
from shared.protocol import SUBPROTOCOL, decode_frame

ROOMS = 50
PEOPLE = 1000
CHURN_SHARE = 0.2
SAY_EVERY = (5.0, 25.0)
STAY_FOR = (10.0, 40.0)
SAMPLE_EVERY = 10.0
QUIET = 5.0  # after the last message, for deliveries to land


@dataclass
class Tally:
    acked: dict[str, dict[str, float]] = field(default_factory=dict)  # room -> id -> echo time
    received: dict[int, set[str]] = field(default_factory=dict)  # stayer -> ids it got
    joined: dict[int, float] = field(default_factory=dict)  # stayer -> when its welcome came
    dropped: set[int] = field(default_factory=set)  # stayers whose connection was closed
    latencies: list[float] = field(default_factory=list)  # current window, seconds
    sent: int = 0
    connects: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    hostile: dict[str, int] = field(default_factory=dict)

    def bump(self, table: dict[str, int], key: str) -> None:
        table[key] = table.get(key, 0) + 1


class Soak:
    def __init__(self, port: int, duration: float) -> None:
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.stop_at = self.loop.time() + duration
        self.tally = Tally()
        self.ids = iter(range(1, 1 << 62))

    def running(self) -> bool:
        return self.loop.time() < self.stop_at

    async def socket_from(self, address: str) -> socket.socket:
        sock = socket.socket()
        sock.bind((address, 0))
        sock.setblocking(False)
        await self.loop.sock_connect(sock, ("127.0.0.1", self.port))
        return sock

    async def person(self, index: int, stays: bool) -> None:
        room = f"soak-{index % ROOMS}"
        address = f"127.0.0.{2 + index % 50}"
        url = f"ws://127.0.0.1:{self.port}/chat/{room}"
        while self.running():
            tried = self.loop.time()
            try:
                sock = await self.socket_from(address)
                ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], sock=sock)
            except (OSError, TimeoutError, websockets.WebSocketException) as error:
                self.tally.bump(self.tally.errors, f"connect: {type(error).__name__}")
                if self.tally.errors[f"connect: {type(error).__name__}"] <= 3:
                    print(
                        f"connect failed: {error!r} after {self.loop.time() - tried:.1f} s",
                        file=sys.stderr,
                    )
                await asyncio.sleep(1)
                continue
            self.tally.connects += 1
            reader = asyncio.ensure_future(self.read(ws, index, room, stays))
            leave_at = self.stop_at if stays else self.loop.time() + random.uniform(*STAY_FOR)
            try:
                await asyncio.sleep(random.uniform(0, SAY_EVERY[1]))
                while self.loop.time() < min(leave_at, self.stop_at):
                    uid = f"{index}-{next(self.ids)}"
                    text = f"soak {uid} {time.monotonic():.6f}"
                    await ws.send(json.dumps({"type": "say", "text": text, "cid": uid}))
                    self.tally.sent += 1
                    await asyncio.sleep(random.uniform(*SAY_EVERY))
                if stays:
                    await asyncio.sleep(QUIET)
            except websockets.ConnectionClosed as closed:
                self.tally.bump(self.tally.errors, f"closed {closed.rcvd and closed.rcvd.code}")
                if stays:  # it did not stay after all: its count is left out
                    self.tally.dropped.add(index)
                    stays = False
            reader.cancel()
            await ws.close()
            if stays:
                return
            await asyncio.sleep(random.uniform(1, 5))

    async def read(self, ws: Any, index: int, room: str, stays: bool) -> None:
        got = self.tally.received.setdefault(index, set()) if stays else None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in ws:
                now = time.monotonic()
                for event in decode_frame(frame):
                    kind = event.get("type")
                    if kind == "welcome" and stays:
                        self.tally.joined[index] = now
                    if kind == "error":
                        self.tally.bump(self.tally.errors, event.get("code", "?"))
                    if kind != "message":
                        continue
                    _, uid, sent_at = event["text"].split(" ")
                    if got is not None:
                        got.add(uid)  # a replayed message was delivered too
                    if event.get("replay"):
                        continue
                    self.tally.latencies.append(now - float(sent_at))
                    if event.get("cid") == uid and uid.startswith(f"{index}-"):
                        self.tally.acked.setdefault(room, {})[uid] = now

    async def ping_flooder(self, n: int) -> None:
        pings = _frame(0x9, b"p" * 125) * 1000
        while self.running():
            sock = await self.socket_from(f"127.0.0.{200 + n}")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(_upgrade("/chat/hostile"))
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                await reader.readuntil(b"\r\n\r\n")
                while self.running():
                    writer.write(pings)
                    await asyncio.wait_for(writer.drain(), 10)
                    await asyncio.sleep(0)  # drain() does not yield while the socket takes it all
                self.tally.bump(self.tally.hostile, "ping flood outlived the soak")
                continue
            self.tally.bump(self.tally.hostile, "ping flood cut")
            writer.close()
            await asyncio.sleep(1)

    async def read_flooder(self, n: int) -> None:
        padded = json.dumps({"type": "read", "seq": 0, "pad": "x" * 60000})
        url = f"ws://127.0.0.1:{self.port}/chat/hostile"
        while self.running():
            sock = await self.socket_from(f"127.0.0.{210 + n}")
            async with websockets.connect(url, subprotocols=[SUBPROTOCOL], sock=sock) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):
                    while self.running():
                        await ws.send(padded)
                        await asyncio.sleep(0)
                code = ws.close_code
            self.tally.bump(self.tally.hostile, f"read flood closed {code}")
            await asyncio.sleep(1)

    async def slowloris(self, n: int, send: bool) -> None:
        head = _upgrade("/chat/hostile")
        kind = "slowloris" if send else "silent socket"
        while self.running():
            sock = await self.socket_from(f"127.0.0.{220 + n % 30}")
            reader, writer = await asyncio.open_connection(sock=sock)
            answer = b""
            with contextlib.suppress(ConnectionError):
                for byte in head if send else b"":
                    writer.write(bytes((byte,)))
                    with contextlib.suppress(TimeoutError):
                        answer = await asyncio.wait_for(reader.read(100), 1.0)
                        break
                if not answer:
                    answer = await reader.read(100)
            status = answer[9:12].decode() or "closed"
            self.tally.bump(self.tally.hostile, f"{kind} answered {status}")
            writer.close()


def _upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: c29hay1zb2FrLXNvYWstIQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else 0.0


def start_relay(state: str) -> tuple[subprocess.Popen[bytes], int]:
    argv = [sys.executable, "-m", "relay", "serve", "--port", "0", "--state-dir", state]
    argv += ["--log-level", "warning"]
    if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
        argv = ["taskset", "-c", str(RELAY_CPU), *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(rb"ws://[\d.]+:(\d+)/", line)
        if found:
            return proc, int(found.group(1))
    raise RuntimeError("relay did not start")


async def attack(duration: float, port: int) -> dict[str, int]:
    """The attackers alone: in their own process, so they cannot stall the people's loop."""
    soak = Soak(port, duration)
    tasks = [asyncio.ensure_future(soak.ping_flooder(n)) for n in range(2)]
    tasks += [asyncio.ensure_future(soak.read_flooder(n)) for n in range(2)]
    tasks += [asyncio.ensure_future(soak.slowloris(n, send=True)) for n in range(20)]
    tasks += [asyncio.ensure_future(soak.slowloris(n, send=False)) for n in range(50)]
    await asyncio.wait(tasks, timeout=duration + 30)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return soak.tally.hostile


async def run(duration: float, pid: int, port: int, hostile: bool) -> dict[str, Any]:
    soak = Soak(port, duration)
    fds_start = _fds(pid)
    started = soak.loop.time()
    stayers = [i for i in range(PEOPLE) if random.random() >= CHURN_SHARE]
    stay_set = set(stayers)
    tasks = [asyncio.ensure_future(soak.person(i, i in stay_set)) for i in range(PEOPLE)]
    attackers = None
    if hostile:
        argv = [sys.executable, "-m", "bench.soak", "--attack", str(port)]
        argv += ["--duration", str(duration)]
        attackers = subprocess.Popen(argv, stdout=subprocess.PIPE)
    lags: list[float] = []

    async def lag() -> None:
        """How late this loop wakes up: delay the people's loop adds to every latency."""
        while soak.running():
            before = soak.loop.time()
            await asyncio.sleep(0.1)
            lags.append(soak.loop.time() - before - 0.1)

    tasks.append(asyncio.ensure_future(lag()))
    samples = []
    cpu = (cpu_seconds(pid) or 0.0, time.process_time(), soak.loop.time())
    while soak.running():
        await asyncio.sleep(SAMPLE_EVERY)
        window, soak.tally.latencies = soak.tally.latencies, []
        now = (cpu_seconds(pid) or 0.0, time.process_time(), soak.loop.time())
        wall = now[2] - cpu[2]
        relay_cpu, load_cpu = (now[0] - cpu[0]) / wall, (now[1] - cpu[1]) / wall
        cpu = now
        samples.append(
            {
                "t": round(soak.loop.time() - started),
                "relay_cpu_pct": round(relay_cpu * 100),
                "load_cpu_pct": round(load_cpu * 100),
                "rss_mib": round((rss_kb(pid) or 0) / 1024, 1),
                "fds": _fds(pid),
                "delivered": len(window),
                "p99_ms": round(_p99(window) * 1000, 1),
                "load_lag_max_ms": round(max(lags, default=0.0) * 1000, 1),
            }
        )
        lags.clear()
        print(json.dumps(samples[-1]), flush=True)
    await asyncio.wait(tasks, timeout=QUIET + 30)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if attackers is not None:
        out, _ = await asyncio.to_thread(attackers.communicate, timeout=60)
        soak.tally.hostile = json.loads(out)
    deadline = time.monotonic() + 30
    while _fds(pid) > fds_start and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    tally = soak.tally
    expected = received = missing = 0
    for index in stayers:
        if index in tally.dropped:
            continue
        # What the relay echoed to its sender after this stayer's welcome: everything fanned
        # out later reached it live, anything a moment earlier came in its replay.
        joined = tally.joined.get(index, float("inf"))
        room = tally.acked.get(f"soak-{index % ROOMS}", {})
        acked = {uid for uid, at in room.items() if at >= joined}
        got = tally.received.get(index, set())
        expected += len(acked)
        received += len(acked & got)
        missing += len(acked - got)
    return {
        "duration_s": duration,
        "people": PEOPLE,
        "rooms": ROOMS,
        "stayers": len(stayers) - len(tally.dropped),
        "stayers_dropped": len(tally.dropped),
        "connects": tally.connects,
        "sent": tally.sent,
        "acked": sum(len(ids) for ids in tally.acked.values()),
        "stayers_expected": expected,
        "stayers_received": received,
        "stayers_missing": missing,
        "errors": tally.errors,
        "hostile": tally.hostile,
        "fds_start": fds_start,
        "fds_end": _fds(pid),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--no-hostile", action="store_true", help="people only, no attackers")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        print(json.dumps(asyncio.run(attack(args.duration, args.attack))), flush=True)
        return
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOADGEN_CPU})
    with tempfile.TemporaryDirectory() as state:
        proc, port = start_relay(state)
        try:
            result = asyncio.run(run(args.duration, proc.pid, port, not args.no_hostile))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
