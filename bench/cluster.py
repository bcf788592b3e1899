"""`python -m bench.cluster`: one room's fan-out on SQLite, on Redis, and split over two nodes.

Three setups, measured side by side in one run (interleaved, order rotated between rounds, a
fresh relay and a fresh `redis-server` per measurement):

- `sqlite`: one node with the default store (what `chat-relay serve` does today);
- `redis`: one node with `--redis` (every message goes through Redis's script and channel);
- `redis-2`: two nodes on the same Redis, the room's members spread evenly over them (client
  `cid` connects to node `cid % 2`) and senders on both, so half of every delivery crosses
  from one node to the other through Redis.

The machine has two cores. The relay nodes are pinned to CPU 0 -- both of them, in the
two-node setup -- and the load generator and `redis-server` to CPU 1. So every setup gets
the same one core for relay work, and `redis-2` shows what splitting a room over nodes
costs, not what a second machine would add. The figures that carry to a real deployment are
per message: relay CPU per delivered message and per inbound message, and Redis CPU per
inbound message (each message is one script call on Redis, whatever the room's size).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from time import monotonic_ns
from typing import Any

from bench.loadgen import LoadGen, Spec, settle
from bench.relays import RESULTS, RunningRelay, _ours, free_port, snapshot_ours
from bench.runner import LOADGEN_CPU, RELAY_CPU, machine
from bench.scenarios import _merge_latency, _rates, _schedule, _spread, verify

SETUPS = ("sqlite", "redis", "redis-2")
SECRET = "bench-cluster-shared-secret"


class RedisServer:
    """A `redis-server` on an ephemeral 127.0.0.1 port, no persistence; stopped by its PID."""

    def __init__(self, cpu: int, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.port = free_port()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(directory), "--logfile", ""]
        if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self._wait_ready()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def running(setup: str, code: Path) -> Iterator[tuple[list[RunningRelay], RedisServer | None]]:
    """The relay nodes of `setup` (and their Redis), stopped again on exit."""
    logs = RESULTS / "logs"
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-redis-") as scratch:
        if setup == "sqlite":
            node = RunningRelay(_ours("cluster-sqlite", "websockets-sansio"), RELAY_CPU, logs, code)
            stack.callback(node.stop)
            yield [node], None
            return
        redis = RedisServer(LOADGEN_CPU, Path(scratch))
        stack.callback(redis.stop)
        extra = ("--redis", redis.url, "--secret", SECRET)
        nodes = []
        for i in range(2 if setup == "redis-2" else 1):
            spec = _ours(f"cluster-{setup}-{i}", "websockets-sansio", *extra)
            node = RunningRelay(spec, RELAY_CPU, logs, code)
            stack.callback(node.stop)
            nodes.append(node)
        yield nodes, redis


def fanout(
    setup: str,
    code: Path,
    protocol: str,
    n: int,
    senders: int,
    modes: list[tuple[str, float]],
    warmup: float,
    duration: float,
) -> list[dict[str, Any]]:
    """N clients in one room, spread over the setup's nodes; one measured run per mode."""
    room = f"cl{n}-{monotonic_ns() % 100000}"
    chosen = _spread(n, senders)
    specs: list[Spec] = [(i, room, "sender" if i in chosen else "member") for i in range(n)]
    records = []
    with running(setup, code) as (nodes, redis):
        ports = tuple(node.port for node in nodes)
        pids = tuple(node.pid for node in nodes)
        watch = {"redis": redis.pid} if redis else {}
        with LoadGen(ports, protocol, pids, 1, watch) as lg:
            for pid in pids:
                settle(pid)
            joined = lg.connect(specs)
            for mode, rate in modes:
                for pid in pids:
                    settle(pid)
                sched = _schedule(warmup, duration, rate=rate)
                results, samples = lg.run(sched)
                rates = _rates(results, sched, samples)
                inbound = rates["msgs_per_s"] / n  # every message reaches all N members
                record = {
                    "scenario": "fanout",
                    "setup": setup,
                    "protocol": protocol,
                    "nodes": len(nodes),
                    "mode": mode,
                    "n": n,
                    "senders": len(chosen),
                    "senders_per_node": [
                        sum(1 for c in chosen if c % len(nodes) == i) for i in range(len(nodes))
                    ],
                    "rate_per_sender": rate,
                    **rates,
                    "redis_cpu": samples.get("redis_cpu"),
                    "inbound_per_s": round(inbound, 1),
                    "relay_us_per_msg": _per(rates["relay_cpu"], rates["msgs_per_s"]),
                    "relay_us_per_inbound": _per(rates["relay_cpu"], inbound),
                    "redis_us_per_inbound": _per(samples.get("redis_cpu"), inbound),
                    "latency_ms": _merge_latency(results, 0),
                    **verify(results),
                    "connect_errors": joined["errors"],
                    "fill_s": round(joined["fill_s"], 3) if joined["fill_s"] else None,
                    "joins_seen": joined["joins_seen"],
                    "joins_ok": joined["joins_seen"] == n * (n + 1) // 2,
                }
                record["ok"] = record["ok"] and not joined["errors"]
                records.append(record)
            lg.close()
    return records


def _per(cpu: float | None, per_second: float) -> float | None:
    """CPU µs per event, from a CPU share (cores) and an event rate."""
    if cpu is None or not per_second:
        return None
    return round(cpu * 1e6 / per_second, 2)


def summary(records: list[dict[str, Any]], ns: list[int]) -> str:
    """Medians over repetitions, as a Markdown table, and the per-message costs against SQLite."""

    def median(setup: str, n: int, mode: str, key: str) -> float | None:
        values = []
        for r in records:
            if (r.get("setup"), r.get("n"), r.get("mode")) != (setup, n, mode):
                continue
            lat = r.get("latency_ms") or {}
            value = lat.get(key) if key in ("p50", "p99") else r.get(key)
            if isinstance(value, int | float):
                values.append(float(value))
        return statistics.median(values) if values else None

    def fmt(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    def ok(setup: str, n: int) -> str:
        runs = [r for r in records if (r.get("setup"), r.get("n")) == (setup, n)]
        good = sum(1 for r in runs if r.get("ok"))
        return f"{good}/{len(runs)}"

    lines = [
        "| setup | N | max msgs/s | relay CPU | relay µs/delivered | relay µs/inbound msg "
        "| Redis CPU | Redis µs/inbound msg | p99 ms, max | p50 / p99 ms @20k/s | fill s "
        "| other CPU | ok |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        for setup in SETUPS:
            row = [
                setup,
                str(n),
                fmt(median(setup, n, "max", "msgs_per_s")),
                fmt(median(setup, n, "max", "relay_cpu"), 2),
                fmt(median(setup, n, "max", "relay_us_per_msg"), 2),
                fmt(median(setup, n, "max", "relay_us_per_inbound"), 0),
                fmt(median(setup, n, "max", "redis_cpu"), 2),
                fmt(median(setup, n, "max", "redis_us_per_inbound"), 1),
                fmt(median(setup, n, "max", "p99"), 1),
                f"{fmt(median(setup, n, 'fixed', 'p50'), 2)} / "
                f"{fmt(median(setup, n, 'fixed', 'p99'), 2)}",
                fmt(median(setup, n, "max", "fill_s"), 1),
                fmt(median(setup, n, "max", "other_cpu"), 2),
                ok(setup, n),
            ]
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| ratio (median of per-round ratios) | N | max msgs/s | relay µs/delivered |"]
    lines.append("|---|---|---|---|")
    for n in ns:
        for setup in SETUPS[1:]:
            rows = _ratios(records, setup, "sqlite", n)
            lines.append(
                f"| {setup} / sqlite | {n} | {rows['msgs_per_s']} | {rows['relay_us_per_msg']} |"
            )
    return "\n".join(lines)


def _ratios(records: list[dict[str, Any]], a: str, b: str, n: int) -> dict[str, str]:
    """Per-round ratio a/b of the closed-loop figures, then their median and range."""
    out = {}
    for key in ("msgs_per_s", "relay_us_per_msg"):
        by_round: dict[int, dict[str, float]] = {}
        for r in records:
            if r.get("n") == n and r.get("mode") == "max" and r.get(key):
                by_round.setdefault(r["rep"], {})[r["setup"]] = r[key]
        ratios = sorted(v[a] / v[b] for v in by_round.values() if a in v and b in v)
        out[key] = (
            f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})" if ratios else "-"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__)
    ap.add_argument("--reps", type=int, default=3, help="rounds (each runs every setup)")
    ap.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="room sizes")
    ap.add_argument("--protocol", choices=["chat.v1", "plain"], default="chat.v1")
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--fixed-load", type=int, default=20_000, help="deliveries/s, fixed mode")
    ap.add_argument("--max-minutes", type=float, default=10.0, help="stop starting new runs")
    ap.add_argument("--summary-only", type=Path, metavar="JSONL", help="only print the tables")
    args = ap.parse_args(argv)
    if args.summary_only:
        lines = args.summary_only.read_text().splitlines()
        stored = [json.loads(line) for line in lines]
        print(summary(stored, sorted({r["n"] for r in stored if "n" in r})))
        return 0
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {LOADGEN_CPU})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    code = snapshot_ours(RESULTS / "snapshot-cluster")
    out = RESULTS / time.strftime("cluster-%Y%m%d-%H%M%S.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.max_minutes * 60
    records: list[dict[str, Any]] = []
    print(f"[cluster] {machine()}; relays on CPU {RELAY_CPU}, loadgen and redis on CPU "
          f"{LOADGEN_CPU}; results {out}", flush=True)  # fmt: skip
    for rep in range(1, args.reps + 1):
        shift = (rep - 1) % len(SETUPS)
        order = SETUPS[shift:] + SETUPS[:shift]
        for n in args.n:
            modes = [("max", 0.0), ("fixed", args.fixed_load / n / args.senders)]
            for setup in order:
                base = {"rep": rep, "setup": setup, "n": n, "protocol": args.protocol}
                if time.monotonic() > deadline:
                    found = [{**base, "error": "skipped: --max-minutes reached"}]
                else:
                    try:
                        found = fanout(
                            setup, code, args.protocol, n, args.senders, modes,
                            args.warmup, args.duration,
                        )  # fmt: skip
                    except Exception as error:
                        found = [{**base, "error": repr(error)}]
                for record in found:
                    record = {**base, **record, "ts": round(time.time(), 1)}
                    records.append(record)
                    with out.open("a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(_line(record), flush=True)
    print(summary(records, args.n))
    return 0


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"  rep {r['rep']} {r['setup']} N={r['n']}: ERROR {r['error']}"
    lat = r.get("latency_ms") or {}
    return (
        f"  rep {r['rep']} {r['setup']} N={r['n']} {r['mode']}: {r['msgs_per_s']:,.0f} msgs/s "
        f"relay CPU {r['relay_cpu']} redis CPU {r['redis_cpu']} loadgen CPU {r['loadgen_cpu']} "
        f"p50 {lat.get('p50')} p99 {lat.get('p99')} ms ok={r['ok']} joins_ok={r['joins_ok']}"
    )


if __name__ == "__main__":
    sys.exit(main())
