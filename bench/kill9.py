"""How long before a `kill -9` may an acknowledged message still be lost, under heavy load?

Each run starts the relay (durable store, pinned to CPU 0), loads it with the kit's load
generator (`../shared/bench/loadgen.py fanout`, chat.v1, pinned to CPU 1: N clients in one
room, S closed-loop senders), and meanwhile runs a few closed-loop witness senders in a room of
their own that note when each echo arrived. After `--load-seconds` the relay gets SIGKILL; it is
restarted on the same database and the witness room's history is compared with what was
echoed. The loss window of a run is the age, at the kill, of the oldest echoed message the
database does not have (0 when none is missing). Prints one JSON line per run and a summary.

    .venv/bin/python -m bench.kill9 --runs 5 --clients 1000 --senders 10
    .venv/bin/python -m bench.kill9 --runs 5 --clients 0 --witnesses 32   # a flood, no fan-out

Only 127.0.0.1; every process it starts is stopped by its PID; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.relays import ROOT, free_port
from shared.protocol import SUBPROTOCOL, decode_frame

LOADGEN = ROOT.parent / "shared" / "bench" / "loadgen.py"
ROOM = "witness"


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    if shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def start_relay(state: Path, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "relay", "serve", "--port", str(port), "--rate", "0"]
    argv += ["--history", "1000000", "--state-dir", str(state), "--log-level", "warning"]
    log = (state / "relay.log").open("ab")
    proc = subprocess.Popen(_pinned(0, argv), stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("relay did not start")


def start_load(port: int, clients: int, senders: int, seconds: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, str(LOADGEN), "fanout", "--port", str(port)]
    argv += ["--protocol", "chat.v1", "--client", "raw", "--clients", str(clients)]
    argv += ["--senders", str(senders), "--rate", "0", "--warmup", "0"]
    argv += ["--duration", str(seconds + 30), "--max-seconds", str(seconds + 180)]
    return subprocess.Popen(_pinned(1, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def witness(port: int, index: int, echoed: dict[int, float], texts: dict[int, str]) -> None:
    """Closed loop: send, wait for the echo, note when it arrived; until the relay dies."""
    url = f"ws://127.0.0.1:{port}/chat/{ROOM}?backlog=0"
    with contextlib.suppress(OSError, websockets.ConnectionClosed, TimeoutError):
        async with websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=None) as ws:
            count = 0
            while True:
                count += 1
                text = f"w{index}:{count}"
                await ws.send(json.dumps({"type": "say", "text": text}))
                while True:
                    frame = await asyncio.wait_for(ws.recv(), 30)
                    arrived = time.monotonic()
                    mine = [
                        event
                        for event in decode_frame(str(frame))
                        if event.get("type") == "message" and event.get("text") == text
                    ]
                    if mine:
                        echoed[mine[0]["seq"]] = arrived
                        texts[mine[0]["seq"]] = text
                        break


async def connected(port: int, clients: int) -> None:
    """Wait (up to two minutes) for the load generator's join storm: the kill hits full load."""
    deadline = time.monotonic() + 120
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while time.monotonic() < deadline:
            if (await http.get("/healthz")).json()["connections"] >= clients:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the load generator did not connect its clients")


async def stored(port: int) -> dict[int, str]:
    kept: dict[int, str] = {}
    before: int | None = None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while True:
            params: dict[str, Any] = {"limit": 200} | ({} if before is None else {"before": before})
            page = (await http.get(f"/rooms/{ROOM}/messages", params=params)).json()["messages"]
            kept |= {message["seq"]: message["text"] for message in page}
            if len(page) < 200:
                return kept
            before = page[0]["seq"]


async def one_run(clients: int, senders: int, witnesses: int, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="kill9-") as tmp:
        state = Path(tmp)
        port = free_port()
        relay = start_relay(state, port)
        load = start_load(port, clients, senders, seconds) if clients else None
        echoed: dict[int, float] = {}
        texts: dict[int, str] = {}
        try:
            await connected(port, clients)
            tasks = [asyncio.create_task(witness(port, i, echoed, texts)) for i in range(witnesses)]
            await asyncio.sleep(seconds)
            killed_at = time.monotonic()
            relay.send_signal(signal.SIGKILL)
            relay.wait()
            await asyncio.gather(*tasks)
        finally:
            if load is not None:
                load.kill()
                load.wait()
            if relay.poll() is None:
                relay.kill()
                relay.wait()
        relay = start_relay(state, port)
        try:
            kept = await stored(port)
        finally:
            relay.terminate()
            relay.wait(15)
    lost = [seq for seq in echoed if kept.get(seq) != texts[seq]]
    window = killed_at - min(echoed[seq] for seq in lost) if lost else 0.0
    last = max(echoed.values(), default=killed_at)
    return {
        "clients": clients,
        "senders": senders if clients else 0,
        "witnesses": witnesses,
        "echoed": len(echoed),
        "lost": len(lost),
        "loss_window_ms": round(window * 1000, 1),
        "last_echo_before_kill_ms": round((killed_at - last) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kill9", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--witnesses", type=int, default=4, help="closed-loop senders watched")
    parser.add_argument("--load-seconds", type=float, default=4.0)
    args = parser.parse_args()
    if args.clients and not LOADGEN.exists():
        raise SystemExit(f"needs the kit's load generator at {LOADGEN}")
    runs = min(max(args.runs, 1), 20)
    clients = min(max(args.clients, 0), 5000)
    witnesses = min(max(args.witnesses, 1), 200)
    seconds = min(max(args.load_seconds, 1.0), 30.0)
    windows = []
    for _ in range(runs):
        try:
            result = asyncio.run(one_run(clients, args.senders, witnesses, seconds))
        except RuntimeError as failed:
            print(json.dumps({"error": str(failed)}), flush=True)
            continue
        windows.append(result["loss_window_ms"])
        print(json.dumps(result), flush=True)
    summary = {"runs": len(windows), "max_loss_window_ms": max(windows, default=None)}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
