"""The driver side of the load generator: forks workers, hands out clients, samples /proc.

Scenarios (bench.scenarios) talk to a `LoadGen`: connect a plan of clients, wait for the join
storm to settle, run a schedule, collect what every worker saw. The driver does no network
I/O itself, so its sleeps are the /proc sampling clock.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from multiprocessing.connection import Connection as Pipe
from time import monotonic_ns
from typing import Any

from bench.procstat import cpu_seconds, machine_busy_seconds, rss_kb
from bench.worker import worker_main

Spec = tuple[int, str, str]  # client id, room, role


class LoadGenError(RuntimeError):
    pass


class LoadGen:
    """Clients for one relay, or for several nodes of one relay (a tuple of ports and of pids).

    With several ports, client `cid` connects to `ports[cid % len(ports)]`, so members and
    senders are spread evenly; the relay CPU reported is the sum over `relay_pid`. `watch`
    names other processes (e.g. Redis) whose CPU share over the window is reported as
    `<name>_cpu`.
    """

    def __init__(
        self,
        port: int | tuple[int, ...],
        protocol: str,
        relay_pid: int | tuple[int, ...],
        procs: int = 1,
        watch: dict[str, int] | None = None,
    ) -> None:
        self.ports = (port,) if isinstance(port, int) else port
        self.protocol = protocol
        self.relay_pids = (relay_pid,) if isinstance(relay_pid, int) else relay_pid
        self.watch = watch or {}
        self.procs: list[mp.Process] = []
        self.pipes: list[Pipe] = []
        context = mp.get_context("fork")
        for _ in range(max(1, procs)):
            mine, theirs = context.Pipe()
            proc = context.Process(
                target=worker_main, args=(theirs, self.ports, protocol, 900), daemon=True
            )
            proc.start()
            self.procs.append(proc)
            self.pipes.append(mine)

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("exit", {}))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    # -- talking to workers ----------------------------------------------------------------------

    def ask(self, command: str, args: list[dict] | dict, timeout: float) -> list[Any]:
        per_worker = args if isinstance(args, list) else [args] * len(self.pipes)
        for pipe, arg in zip(self.pipes, per_worker, strict=True):
            pipe.send((command, arg))
        return self.collect(timeout)

    def send(self, command: str, args: dict) -> None:
        for pipe in self.pipes:
            pipe.send((command, args))

    def collect(self, timeout: float) -> list[Any]:
        replies = []
        deadline = time.monotonic() + timeout
        for pipe in self.pipes:
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise LoadGenError("a load generator worker did not answer in time")
            status, reply = pipe.recv()
            if status != "ok":
                raise LoadGenError(f"worker failed: {reply}")
            replies.append(reply)
        return replies

    # -- steps -----------------------------------------------------------------------------------

    def connect(self, specs: list[Spec], concurrency: int = 100, timeout: float = 120.0) -> dict:
        """Open every client, then wait until the relay has gone quiet. Reports the fill time."""
        share = len(self.pipes)
        start = monotonic_ns()
        replies = self.ask(
            "connect",
            [
                {"specs": specs[i::share], "concurrency": max(1, concurrency // share)}
                for i in range(share)
            ],
            timeout,
        )
        quiet = self.ask("quiet", {"quiet_ms": 500, "cap_s": timeout}, timeout + 5)
        handshakes = sorted(ns for r in replies for ns in r["hs_ns"])
        last_join = max(q["last_join_ns"] for q in quiet)
        return {
            "errors": sum(r["errors"] for r in replies),
            "connect_s": (max(r["done_ns"] for r in replies) - start) / 1e9,
            "fill_s": (last_join - start) / 1e9 if last_join else None,
            "joins_seen": sum(q["joins"] for q in quiet),
            "quiet": all(q["quiet"] for q in quiet),
            "handshake_ms": _quantiles([ns / 1e6 for ns in handshakes]),
        }

    def run(self, sched: dict, rss_every: float = 0.0) -> tuple[list[dict], dict]:
        """Play `sched` on every worker; meanwhile sample the relay's CPU over [m0, m1)."""
        self.send("run", {"sched": sched})
        samples: dict[str, Any] = {"rss_kb": []}
        marks = [(sched["m0"], "m0"), (sched["m1"], "m1")]
        if rss_every:
            step = int(rss_every * 1e9)
            marks += [(t, "rss") for t in range(sched["t_start"], sched["t_stop"], step)]
        for at, what in sorted(marks):
            _sleep_until(at)
            if what == "rss":
                samples["rss_kb"].append(((at - sched["t_start"]) / 1e9, self.relay_rss_kb()))
            else:
                samples[what] = (
                    self.relay_cpu(),
                    self.loadgen_cpu(),
                    machine_busy_seconds(),
                    {name: cpu_seconds(pid) for name, pid in self.watch.items()},
                )
        timeout = (sched["t_stop"] - monotonic_ns()) / 1e9 + sched["drain_s"] + 40
        results = self.collect(timeout)
        window = (sched["m1"] - sched["m0"]) / 1e9
        (relay0, lg0, all0, w0), (relay1, lg1, all1, w1) = samples["m0"], samples["m1"]
        samples["relay_cpu"] = _share(relay0, relay1, window)
        samples["loadgen_cpu"] = _share(lg0, lg1, window)
        watched = 0.0
        for name in self.watch:
            samples[f"{name}_cpu"] = _share(w0[name], w1[name], window)
            watched += samples[f"{name}_cpu"] or 0.0
        other = _share(all0[0], all1[0], window) or 0.0
        other -= (samples["relay_cpu"] or 0) + (samples["loadgen_cpu"] or 0) + watched
        samples["other_cpu"] = round(max(0.0, other), 3)
        samples["irq_cpu"] = _share(all0[1], all1[1], window)
        samples["relay_rss_mb"] = (self.relay_rss_kb() or 0) / 1024
        return results, samples

    def close(self) -> dict[int, int]:
        codes: dict[int, int] = {}
        for reply in self.ask("close", {}, 30):
            for code, count in reply["close_codes"].items():
                codes[code] = codes.get(code, 0) + count
        return codes

    def relay_cpu(self) -> float | None:
        each = [cpu_seconds(pid) for pid in self.relay_pids]
        return None if None in each else sum(t or 0.0 for t in each)

    def relay_rss_kb(self) -> int | None:
        each = [rss_kb(pid) for pid in self.relay_pids]
        return None if None in each else sum(kb or 0 for kb in each)

    def loadgen_cpu(self) -> float:
        return sum(cpu_seconds(p.pid) or 0.0 for p in self.procs if p.pid is not None)


def settle(pid: int, cap_s: float = 20.0) -> bool:
    """Wait until the relay is nearly idle, so one run's teardown does not leak into the next."""
    deadline = time.monotonic() + cap_s
    calm = 0
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(0.25)
        after = cpu_seconds(pid)
        if before is None or after is None:
            return False
        calm = calm + 1 if after - before < 0.025 else 0
        if calm >= 2:
            return True
    return False


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _share(before: float | None, after: float | None, seconds: float) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) / seconds, 3)


def _quantiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    values = sorted(values)
    return {
        "n": len(values),
        "p50": round(pick(values, 0.50), 3),
        "p90": round(pick(values, 0.90), 3),
        "p99": round(pick(values, 0.99), 3),
        "max": round(values[-1], 3),
    }


def pick(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return sorted_values[index]


def latency_summary(values_ns: list[int]) -> dict[str, float] | None:
    return _quantiles([v / 1e6 for v in values_ns])
