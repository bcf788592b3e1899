"""Fan-out throughput with the SQLite store versus `--db :memory:`, measured side by side.

The relay runs pinned to CPU 0, this script's clients to CPU 1. Each rep starts a fresh relay per
store, interleaved (sqlite, memory, sqlite, ...), so drift in the machine hits both alike. One
room, N chat.v1 clients, S of them sending closed-loop (send, wait for the own echo, repeat);
the number is room messages per second, each delivered to all N clients.

    .venv/bin/python -m bench.store_compare [--clients 100] [--senders 10] [--seconds 5] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

from shared.protocol import SUBPROTOCOL

_URL = re.compile(rb"ws://[\d.]+:(\d+)/chat/")


def start_relay(db: str, state: Path) -> tuple[subprocess.Popen[bytes], int]:
    command = ["taskset", "-c", "0", sys.executable, "-m", "relay", "serve", "--port", "0"]
    command += ["--rate", "0", "--log-level", "warning", "--state-dir", str(state), "--db", db]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    for line in proc.stdout:
        found = _URL.search(line)
        if found:
            return proc, int(found.group(1))
    raise RuntimeError("relay did not start")


def stop_relay(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if the relay has not exited within 15 s."""
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_load(
    port: int, pid: int, clients: int, senders: int, seconds: float
) -> dict[str, float]:
    url = f"ws://127.0.0.1:{port}/chat/bench?backlog=0"
    sockets = [await websockets.connect(url, subprotocols=[SUBPROTOCOL]) for _ in range(clients)]
    received = [0] * clients
    echoes = [asyncio.Event() for _ in range(senders)]
    running = True

    async def receive(index: int) -> None:
        marker = f'"text":"s{index}-'
        try:
            async for frame in sockets[index]:
                assert isinstance(frame, str)
                received[index] += frame.count('"type":"message"')
                if index < senders and marker in frame:
                    echoes[index].set()
        except websockets.ConnectionClosed:
            return

    async def send(index: int) -> None:
        count = 0
        while running:
            count += 1
            echoes[index].clear()
            await sockets[index].send(f'{{"type":"say","text":"s{index}-{count} hello"}}')
            await echoes[index].wait()

    readers = [asyncio.create_task(receive(i)) for i in range(clients)]
    writers = [asyncio.create_task(send(i)) for i in range(senders)]
    await asyncio.sleep(1.0)  # warm-up: the load generator's clock, not synchronisation
    start, cpu0, before = time.monotonic(), cpu_seconds(pid), sum(received)
    await asyncio.sleep(seconds)
    elapsed, cpu1, after = time.monotonic() - start, cpu_seconds(pid), sum(received)
    running = False
    await asyncio.wait(writers, timeout=5)
    for ws in sockets:
        await ws.close()
    await asyncio.wait(readers, timeout=5)
    for task in writers + readers:
        task.cancel()
    deliveries = (after - before) / elapsed
    return {
        "msgs_per_s": deliveries / clients,
        "deliveries_per_s": deliveries,
        "relay_cpu": (cpu1 - cpu0) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--senders", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1})
    results: dict[str, list[dict[str, float]]] = {"sqlite": [], "memory": []}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for store in ("sqlite", "memory"):
                state = Path(tmp) / f"{store}-{rep}"
                db = str(state / "chat.db") if store == "sqlite" else ":memory:"
                proc, port = start_relay(db, state)
                try:
                    result = asyncio.run(
                        run_load(port, proc.pid, args.clients, args.senders, args.seconds)
                    )
                finally:
                    stop_relay(proc)
                results[store].append(result)
                print(
                    f"rep {rep + 1} {store:6} {result['msgs_per_s']:8.0f} msg/s "
                    f"{result['deliveries_per_s']:9.0f} deliveries/s "
                    f"relay cpu {result['relay_cpu']:.2f} "
                    f"({result['relay_cpu'] * 1000 / result['msgs_per_s']:.3f} ms/msg)",
                    flush=True,
                )
    medians = {
        store: statistics.median(r["msgs_per_s"] for r in runs) for store, runs in results.items()
    }
    print(
        f"median sqlite {medians['sqlite']:.0f} msg/s, memory {medians['memory']:.0f} msg/s, "
        f"ratio sqlite/memory {medians['sqlite'] / medians['memory']:.3f}"
    )


if __name__ == "__main__":
    main()
