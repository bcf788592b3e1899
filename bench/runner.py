"""The benchmark matrix: which relay, which protocol, which scenario, in what order.

Relays are interleaved inside every repetition (and the order rotates between repetitions), so
a burst of noise from the VM hits all of them rather than one; comparisons are made only
within one run, as ratios. Every record is appended to a JSON-lines file as soon as it exists.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.relays import RESULTS, RelaySpec, RunningRelay, catalogue, snapshot_ours

RELAY_CPU = 0
LOADGEN_CPU = 1


@dataclass(frozen=True)
class Case:
    """A relay spoken to in one protocol, e.g. ours in chat.v1 or the naive reference (plain)."""

    relay: str
    protocol: str = "plain"

    @property
    def label(self) -> str:
        spec_ours = self.relay.startswith("ours")
        return f"{self.relay}/{self.protocol}" if spec_ours else self.relay


OURS_V1 = Case("ours", "chat.v1")
OURS_PLAIN = Case("ours", "plain")


@dataclass
class Plan:
    reps: int
    fanout_n: list[int]
    fanout_cases: list[Case]
    warmup: float
    duration: float
    senders: int = 10
    fixed_load: int = 20_000  # deliveries per second, whatever N
    rooms: tuple[int, int, float] = (100, 10, 2.0)
    rooms_cases: list[Case] = field(default_factory=list)
    idle_conns: int = 10_000
    idle_cases: list[Case] = field(default_factory=list)
    slow_times: tuple[float, float] = (5.0, 15.0)
    slow_cases: list[Case] = field(default_factory=list)
    churn_seconds: float = 8.0
    churn_cases: list[Case] = field(default_factory=list)


def full_plan() -> Plan:
    refs = [Case("naive"), Case("wsb"), Case("batched"), Case("node")]
    return Plan(
        reps=3,
        fanout_n=[100, 1000],
        fanout_cases=[
            OURS_V1,
            OURS_PLAIN,
            *refs,
            Case("ours-wsproto", "chat.v1"),
            Case("ours-websockets", "chat.v1"),
            Case("ours-memory", "chat.v1"),
        ],
        warmup=2.0,
        duration=5.0,
        rooms_cases=[OURS_V1, OURS_PLAIN, Case("naive"), Case("node")],
        idle_cases=[OURS_V1, OURS_PLAIN, Case("naive"), Case("queued"), Case("wsb"), Case("node")],
        slow_cases=[OURS_V1, OURS_PLAIN, Case("naive"), Case("queued"), Case("node")],
        churn_cases=[OURS_V1, OURS_PLAIN, Case("naive"), Case("node")],
    )


def quick_plan() -> Plan:
    basic = [OURS_V1, OURS_PLAIN, Case("naive"), Case("node")]
    return Plan(
        reps=1,
        fanout_n=[100],
        fanout_cases=basic,
        warmup=1.0,
        duration=2.0,
        rooms=(20, 10, 2.0),
        rooms_cases=[OURS_V1, Case("naive")],
        idle_conns=1000,
        idle_cases=[OURS_V1, Case("naive")],
        slow_times=(3.0, 6.0),
        slow_cases=[OURS_V1],
        churn_seconds=4.0,
        churn_cases=[OURS_V1, OURS_PLAIN],
    )


class Runner:
    def __init__(self, plan: Plan, out: Path, deadline: float, procs: int = 1) -> None:
        self.plan = plan
        self.out = out
        self.deadline = deadline
        self.procs = procs
        self.relays = catalogue()
        self.skipped: list[str] = []
        out.parent.mkdir(parents=True, exist_ok=True)
        self.code = snapshot_ours(RESULTS / "snapshot")

    def _available(self, cases: list[Case]) -> list[Case]:
        usable = []
        for case in cases:
            spec = self.relays.get(case.relay)
            if spec is None or case.protocol not in spec.protocols:
                note = f"{case.label} unavailable (missing node or ../shared/bench/ref)"
                if note not in self.skipped:
                    self.skipped.append(note)
                continue
            usable.append(case)
        return usable

    def _record(self, base: dict, record: dict) -> None:
        line = {**base, **record, "ts": round(time.time(), 1)}
        with self.out.open("a") as f:
            f.write(json.dumps(line, default=repr) + "\n")
        _say(_one_line(line))

    def _measure(self, case: Case, set_name: str, rep: int, job: Callable[..., Any]) -> None:
        """Start a fresh relay for `case`, run `job(target)`, record what it returns."""
        base = {"set": set_name, "rep": rep, "label": case.label, "relay": case.relay}
        base["protocol"] = case.protocol
        if time.monotonic() > self.deadline:
            self._record(base, {"error": "skipped: run deadline reached"})
            return
        spec: RelaySpec = self.relays[case.relay]
        try:
            with RunningRelay(spec, RELAY_CPU, RESULTS / "logs", self.code) as relay:
                target = scenarios.Target(relay.port, relay.pid, case.protocol, self.procs)
                outcome = job(target)
        except Exception as error:
            self._record(base, {"error": repr(error)})
            return
        for record in outcome if isinstance(outcome, list) else [outcome]:
            self._record(base, record)

    def run(self) -> None:
        plan = self.plan
        fanout_cases = self._available(plan.fanout_cases)
        rooms_cases = self._available(plan.rooms_cases)
        for rep in range(1, plan.reps + 1):
            order = _rotate(fanout_cases, rep)
            for n in plan.fanout_n:
                fixed = plan.fixed_load / n / plan.senders
                modes = [("max", 0.0), ("fixed", fixed)]
                for case in order:
                    _say(f"rep {rep}/{plan.reps}: fanout N={n} {case.label}")
                    self._measure(
                        case,
                        "fanout",
                        rep,
                        lambda t, n=n, modes=modes: scenarios.fanout(
                            t, n, plan.senders, modes, plan.warmup, plan.duration
                        ),
                    )
            for case in _rotate(rooms_cases, rep):
                _say(f"rep {rep}/{plan.reps}: rooms {case.label}")
                count, per_room, rate = plan.rooms
                self._measure(
                    case,
                    "rooms",
                    rep,
                    lambda t, c=count, k=per_room, r=rate: scenarios.rooms(
                        t, c, k, r, plan.warmup, plan.duration
                    ),
                )
        for case in self._available(plan.idle_cases):
            _say(f"idle K={plan.idle_conns} {case.label}")
            self._measure(case, "idle", 1, lambda t: scenarios.idle(t, plan.idle_conns))
        for case in self._available(plan.slow_cases):
            _say(f"slow {case.label}")
            normal, paused = plan.slow_times
            self._measure(
                case, "slow", 1, lambda t, a=normal, b=paused: scenarios.slow(t, normal=a, paused=b)
            )
        for case in self._available(plan.churn_cases):
            _say(f"churn {case.label}")
            self._measure(
                case, "churn", 1, lambda t: scenarios.churn(t, duration=plan.churn_seconds)
            )


def _rotate(cases: list[Case], rep: int) -> list[Case]:
    if not cases:
        return cases
    shift = (rep - 1) % len(cases)
    return cases[shift:] + cases[:shift]


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def _say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _one_line(r: dict) -> str:
    if "error" in r:
        return f"  {r['label']} {r['set']}: ERROR {r['error']}"
    keys = ("mode", "n", "msgs_per_s", "msgs_per_frame", "relay_cpu", "loadgen_cpu", "other_cpu")
    keys += ("fill_s",)
    keys += ("rss_kb_per_conn", "p99_ratio", "rss_growth_mb", "slow_close_code", "ok")
    parts = [f"{k}={r[k]}" for k in keys if r.get(k) is not None]
    lat = r.get("latency_ms")
    if lat:
        parts.append(f"p50={lat['p50']} p99={lat['p99']}")
    return f"  {r['label']} {r['set']}: " + " ".join(parts)
