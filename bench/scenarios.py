"""The scenarios. Each takes a running relay and returns JSON-able records, checked as measured.

Correctness is part of every record: `ok` is false when any expected delivery is missing,
duplicated, out of order or crossed into another room, so a fast but wrong relay never wins.
"""

from __future__ import annotations

import array
import time
from dataclasses import dataclass
from time import monotonic_ns
from typing import Any

from bench.loadgen import LoadGen, Spec, latency_summary, settle
from bench.procstat import cpu_seconds, rss_kb

MAX_CONNS = 20_000


@dataclass(frozen=True)
class Target:
    """Where the load goes: a relay process listening on 127.0.0.1:port."""

    port: int
    pid: int
    protocol: str  # "plain" or "chat.v1"
    procs: int = 1


def _schedule(warmup: float, duration: float, **extra: Any) -> dict:
    t_start = monotonic_ns() + 300_000_000
    m0 = t_start + int(warmup * 1e9)
    m1 = m0 + int(duration * 1e9)
    sched = {"t_start": t_start, "m0": m0, "m1": m1, "t_stop": m1, "drain_s": 5.0}
    sched.update({"rate": 0.0, "window": 2, "pad": 0, "lat_windows": [(m0, m1)]})
    sched.update(extra)
    return sched


def verify(results: list[dict]) -> dict:
    """Every stayer got every message of its room's senders, in order, once, and nothing else."""
    sent: dict[int, int] = {}
    room_of: dict[int, str] = {}
    for result in results:
        sent.update(result["sent"])
        room_of.update(result["rooms_of_senders"])
    by_room: dict[str, list[int]] = {}
    for sender, room in room_of.items():
        by_room.setdefault(room, []).append(sender)
    expected = received = order_errors = cross = missing = 0
    for result in results:
        for room, count, errors, crossed, last in result["receivers"]:
            senders = by_room.get(room, [])
            expected += sum(sent[s] for s in senders)
            missing += sum(max(0, sent[s] - last.get(s, 0)) for s in senders)
            received += count
            order_errors += errors
            cross += crossed
    closed_early = sum(r["closed_early"] for r in results)
    return {
        "ok": expected == received and not (order_errors or cross or missing or closed_early),
        "expected": expected,
        "received": received,
        "missing": missing,
        "order_errors": order_errors,
        "cross_room": cross,
        "closed_early": closed_early,
        "stalls": sum(r["stalls"] for r in results),
    }


def _merge_latency(results: list[dict], index: int) -> dict | None:
    merged = array.array("q")
    for result in results:
        merged.frombytes(result["lat"][index])
    return latency_summary(list(merged))


def _rates(results: list[dict], sched: dict, samples: dict) -> dict:
    seconds = (sched["m1"] - sched["m0"]) / 1e9
    delivered = sum(r["delivered_in_window"] for r in results)
    frames = sum(r["frames_in_window"] for r in results)
    relay, loadgen = samples["relay_cpu"], samples["loadgen_cpu"]
    return {
        "msgs_per_s": round(delivered / seconds, 1),
        "frames_per_s": round(frames / seconds, 1),
        "msgs_per_frame": round(delivered / frames, 2) if frames else None,
        "relay_cpu": relay,
        "loadgen_cpu": loadgen,
        "bottleneck": _bottleneck(relay, loadgen),
        "other_cpu": samples.get("other_cpu"),
        "irq_cpu": samples.get("irq_cpu"),
        "relay_rss_mb": round(samples["relay_rss_mb"], 1),
    }


def _bottleneck(relay: float | None, loadgen: float | None) -> str:
    busy_relay = relay is not None and relay >= 0.9
    busy_loadgen = loadgen is not None and loadgen >= 0.9
    if busy_relay and busy_loadgen:
        return "both"
    return "relay" if busy_relay else "loadgen" if busy_loadgen else "none"


def _spread(n: int, senders: int) -> set[int]:
    """Sender positions spread over the join order, so no relay is favoured by who sends."""
    if senders >= n:
        return set(range(n))
    if senders == 1:
        return {n - 1}
    return {round(i * (n - 1) / (senders - 1)) for i in range(senders)}


def fanout(
    target: Target,
    n: int,
    senders: int,
    modes: list[tuple[str, float]],
    warmup: float,
    duration: float,
) -> list[dict]:
    """N clients in one room; one join storm, then one measured run per (mode, rate per sender).

    rate 0 is the closed loop (each sender keeps 2 messages in flight: maximum throughput).
    """
    room = f"fan{n}-{monotonic_ns() % 100000}"
    chosen = _spread(n, senders)
    specs: list[Spec] = [(i, room, "sender" if i in chosen else "member") for i in range(n)]
    records = []
    with LoadGen(target.port, target.protocol, target.pid, target.procs) as lg:
        settle(target.pid)
        joined = lg.connect(specs)
        expected_joins = n * (n + 1) // 2
        for mode, rate in modes:
            settle(target.pid)
            sched = _schedule(warmup, duration, rate=rate)
            results, samples = lg.run(sched)
            record = {
                "scenario": "fanout",
                "mode": mode,
                "n": n,
                "senders": len(chosen),
                "rate_per_sender": rate,
                **_rates(results, sched, samples),
                "latency_ms": _merge_latency(results, 0),
                **verify(results),
                "connect_errors": joined["errors"],
                "fill_s": round(joined["fill_s"], 3) if joined["fill_s"] else None,
                "joins_ok": joined["joins_seen"] == expected_joins,
            }
            record["ok"] = record["ok"] and not joined["errors"]
            records.append(record)
        lg.close()
    return records


def rooms(
    target: Target, count: int, per_room: int, rate: float, warmup: float, duration: float
) -> dict:
    """R rooms of C clients, everyone sending: isolation is checked on every delivery."""
    stamp = monotonic_ns() % 100000
    specs: list[Spec] = [
        (r * per_room + i, f"rm{stamp}-{r}", "sender")
        for r in range(count)
        for i in range(per_room)
    ]
    with LoadGen(target.port, target.protocol, target.pid, target.procs) as lg:
        settle(target.pid)
        joined = lg.connect(specs)
        settle(target.pid)
        sched = _schedule(warmup, duration, rate=rate)
        results, samples = lg.run(sched)
        lg.close()
    record = {
        "scenario": "rooms",
        "rooms": count,
        "per_room": per_room,
        "rate_per_sender": rate,
        **_rates(results, sched, samples),
        "latency_ms": _merge_latency(results, 0),
        **verify(results),
        "connect_errors": joined["errors"],
    }
    record["isolation_ok"] = record["cross_room"] == 0
    return record


def idle(target: Target, conns: int, hold: float = 2.0) -> dict:
    """K connections that only sit there: relay memory per connection and connect speed.

    One client per room, so the figure is the connection's cost, not an O(K^2) join storm.
    """
    if conns > MAX_CONNS:
        raise ValueError(f"at most {MAX_CONNS} connections")
    stamp = monotonic_ns() % 100000
    specs: list[Spec] = [(i, f"idle{stamp}-{i}", "member") for i in range(conns)]
    with LoadGen(target.port, target.protocol, target.pid, target.procs) as lg:
        settle(target.pid)
        before = rss_kb(target.pid) or 0
        cpu0 = cpu_seconds(target.pid) or 0.0
        joined = lg.connect(specs, concurrency=100, timeout=300)
        cpu1 = cpu_seconds(target.pid) or 0.0
        settle(target.pid)
        time.sleep(hold)
        held = rss_kb(target.pid) or 0
        codes = lg.close()
        settle(target.pid)
        after = rss_kb(target.pid) or 0
    connected = conns - joined["errors"]
    return {
        "scenario": "idle",
        "conns": conns,
        "connected": connected,
        "connect_errors": joined["errors"],
        "connect_s": round(joined["connect_s"], 3),
        "connects_per_s": round(connected / joined["connect_s"], 1)
        if joined["connect_s"]
        else None,
        "handshake_ms": joined["handshake_ms"],
        "relay_cpu_ms_per_conn": round((cpu1 - cpu0) * 1000 / connected, 3) if connected else None,
        "rss_before_mb": round(before / 1024, 1),
        "rss_held_mb": round(held / 1024, 1),
        "rss_after_close_mb": round(after / 1024, 1),
        "rss_kb_per_conn": round((held - before) / connected, 2) if connected else None,
        "close_codes": codes,
        "ok": connected == conns,
    }


def slow(
    target: Target,
    n: int = 20,
    senders: int = 5,
    rate: float = 50.0,
    pad: int = 4000,
    normal: float = 5.0,
    paused: float = 15.0,
) -> dict:
    """One extra client stops reading (64 KB receive buffer) while the room goes on chatting.

    Compares the others' latency before and during the pause (split by send time), follows the
    relay's RSS, and reads how the slow client was closed once it reads again.
    """
    room = f"slow{monotonic_ns() % 100000}"
    chosen = _spread(n, senders)
    specs: list[Spec] = [(i, room, "sender" if i in chosen else "member") for i in range(n)]
    specs.append((n, room, "slow"))
    with LoadGen(target.port, target.protocol, target.pid, target.procs) as lg:
        settle(target.pid)
        joined = lg.connect(specs)
        settle(target.pid)
        t_start = monotonic_ns() + 300_000_000
        pause_ns = t_start + int(normal * 1e9)
        t_stop = pause_ns + int(paused * 1e9)
        sched = _schedule(0.0, 0.0, rate=rate, pad=pad)
        sched.update(
            t_start=t_start,
            m0=t_start + 1_000_000_000,
            m1=t_stop,
            t_stop=t_stop,
            pause_ns=pause_ns,
            lat_windows=[(t_start + 1_000_000_000, pause_ns), (pause_ns, t_stop)],
        )
        results, samples = lg.run(sched, rss_every=0.5)
        lg.close()
    rss = [(t, kb) for t, kb in samples["rss_kb"] if kb]
    at_pause = [kb for t, kb in rss if t <= normal]
    during = [kb for t, kb in rss if t > normal]
    slow_info = next(r for r in results if "slow_close_code" in r)
    before, during_lat = _merge_latency(results, 0), _merge_latency(results, 1)
    growth = (max(during) - at_pause[-1]) / 1024 if at_pause and during else None
    p99_ratio = None
    if before and during_lat and before["p99"]:
        p99_ratio = round(during_lat["p99"] / before["p99"], 2)
    return {
        "scenario": "slow",
        "n": n,
        "senders": len(chosen),
        "rate_per_sender": rate,
        "pad": pad,
        "normal_s": normal,
        "paused_s": paused,
        "latency_normal_ms": before,
        "latency_paused_ms": during_lat,
        "p99_ratio": p99_ratio,
        "rss_growth_mb": round(growth, 1) if growth is not None else None,
        "rss_timeline_mb": [(t, round(kb / 1024, 1)) for t, kb in rss],
        **{k: v for k, v in slow_info.items() if k.startswith("slow_")},
        **verify(results),
        "connect_errors": joined["errors"],
    }


def churn(
    target: Target,
    n: int = 100,
    senders: int = 5,
    rate: float = 20.0,
    concurrency: int = 20,
    hold_s: float = 0.2,
    duration: float = 8.0,
    max_conns: int = 5000,
) -> dict:
    """Clients come and go in a busy room; those who stay must still get everything."""
    room = f"churn{monotonic_ns() % 100000}"
    chosen = _spread(n, senders)
    specs: list[Spec] = [(i, room, "sender" if i in chosen else "member") for i in range(n)]
    with LoadGen(target.port, target.protocol, target.pid, 1) as lg:
        settle(target.pid)
        joined = lg.connect(specs)
        settle(target.pid)
        churn_spec = {
            "room": room,
            "first_id": 1_000_000,
            "max_conns": min(max_conns, MAX_CONNS - n),
            "concurrency": concurrency,
            "hold_s": hold_s,
        }
        sched = _schedule(0.5, duration, rate=rate, churn=churn_spec)
        results, samples = lg.run(sched)
        lg.close()
    stats = results[0]["churn"]
    record = {
        "scenario": "churn",
        "n": n,
        "senders": len(chosen),
        "rate_per_sender": rate,
        "churn_connects": stats.get("connected", 0),
        "churn_connects_per_s": round(stats.get("connected", 0) / (duration + 0.5), 1),
        "churn_failed": stats.get("failed", 0),
        "churn_order_errors": stats.get("errors", 0),
        "latency_ms": _merge_latency(results, 0),
        "relay_cpu": samples["relay_cpu"],
        **verify(results),
        "connect_errors": joined["errors"],
    }
    record["ok"] = record["ok"] and not record["churn_order_errors"]
    return record
