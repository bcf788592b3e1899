"""A load generator process: holds a share of the clients and plays the driver's schedule.

The driver (bench.loadgen) forks one or more of these and talks to each over a pipe. Times in
a schedule are CLOCK_MONOTONIC nanoseconds, which every process on the machine shares, so the
driver can line up phases and /proc samples with what the clients did.
"""

from __future__ import annotations

import array
import asyncio
import random
import signal
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from time import monotonic_ns
from typing import Any

from bench.client import WsClient, connect
from bench.tally import Receiver, Shared, load_text

SUBPROTOCOL = "chat.v1"
SLOW_RCVBUF = 65536
WATCHDOG_NS = 3_000_000_000


@dataclass
class Member:
    cid: int
    room: str
    role: str  # "sender", "member", "slow" or "churn"
    receiver: Receiver
    client: WsClient | None = None
    sent: int = 0
    hs_ns: int = 0
    credits: asyncio.Semaphore | None = None
    progress: int = 0
    stalls: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Worker:
    def __init__(self, pipe: Pipe, ports: tuple[int, ...], protocol: str) -> None:
        self.pipe = pipe
        self.ports = ports
        self.json = protocol == "chat.v1"
        self.subprotocol = SUBPROTOCOL if self.json else None
        self.query = "?backlog=0" if self.json else ""
        self.shared = Shared()
        self.members: list[Member] = []
        self.connect_errors = 0

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            command, args = await loop.run_in_executor(None, self.pipe.recv)
            if command == "exit":
                return
            try:
                reply = await getattr(self, "do_" + command)(**args)
            except Exception as error:
                self.pipe.send(("error", repr(error)))
                return
            self.pipe.send(("ok", reply))

    # -- connections -----------------------------------------------------------------------------

    async def _open(self, member: Member) -> bool:
        strict = member.role in ("sender", "member")
        member.receiver = Receiver(member.room, strict)
        # The slow reader's late deliveries are its own business: keep them out of the others'
        # latency and throughput figures.
        shared = Shared() if member.role == "slow" else self.shared
        on_text = member.receiver.handler(shared, self.json, member.cid)
        rcvbuf = SLOW_RCVBUF if member.role == "slow" else 0
        path = f"/chat/{member.room}{self.query}"
        start = monotonic_ns()
        try:
            port = self.ports[member.cid % len(self.ports)]
            member.client = await connect(port, path, on_text, self.subprotocol, rcvbuf)
        except (TimeoutError, OSError) as error:
            self.connect_errors += 1
            member.extra["error"] = repr(error)
            return False
        member.hs_ns = monotonic_ns() - start
        return True

    async def do_connect(self, specs: list[tuple[int, str, str]], concurrency: int) -> dict:
        gate = asyncio.Semaphore(concurrency)
        fresh = [Member(cid, room, role, Receiver(room, True)) for cid, room, role in specs]
        self.members += fresh

        async def one(member: Member) -> None:
            async with gate:
                await self._open(member)

        errors = self.connect_errors
        await asyncio.gather(*(one(m) for m in fresh))
        return {
            "errors": self.connect_errors - errors,
            "hs_ns": sorted(m.hs_ns for m in fresh if m.client is not None),
            "done_ns": monotonic_ns(),
        }

    async def do_quiet(self, quiet_ms: int, cap_s: float) -> dict:
        """Wait until nothing has arrived for `quiet_ms` (the join storm has settled)."""
        deadline = monotonic_ns() + int(cap_s * 1e9)
        quiet = False
        while monotonic_ns() < deadline:
            if monotonic_ns() - self.shared.last_rx > quiet_ms * 1_000_000:
                quiet = True
                break
            await asyncio.sleep(0.05)
        return {
            "quiet": quiet,
            "joins": self.shared.joins,
            "last_join_ns": self.shared.last_join_ns,
        }

    async def do_close(self) -> dict:
        codes: dict[int, int] = {}
        for member in self.members:
            if member.client is not None:
                member.client.close()
        waits = [m.client.closed for m in self.members if m.client is not None]
        if waits:
            await asyncio.wait(waits, timeout=3.0)
        for member in self.members:
            if member.client is not None and member.client.closed.done():
                code = member.client.closed.result()
                codes[code] = codes.get(code, 0) + 1
        self.members = []
        return {"close_codes": codes}

    # -- a measured run --------------------------------------------------------------------------

    async def do_run(self, sched: dict) -> dict:
        shared = self.shared
        shared.count_joins = False
        shared.windows = [(lo, hi, array.array("q")) for lo, hi in sched["lat_windows"]]
        shared.measure = (sched["m0"], sched["m1"])
        shared.delivered_in_window = shared.frames_in_window = 0
        senders = [m for m in self.members if m.role == "sender" and m.client is not None]
        slow = [m for m in self.members if m.role == "slow" and m.client is not None]
        await _sleep_until(sched["t_start"])
        tasks = [asyncio.ensure_future(self._send_loop(m, sched)) for m in senders]
        if slow and sched.get("pause_ns"):
            tasks.append(asyncio.ensure_future(self._pause(slow, sched["pause_ns"])))
        churn: dict[str, int] = {}
        if sched.get("churn"):
            tasks.append(asyncio.ensure_future(self._churn(sched, churn)))
        await _sleep_until(sched["t_stop"])
        await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        drain_end = monotonic_ns() + int(sched["drain_s"] * 1e9)
        while monotonic_ns() < drain_end and monotonic_ns() - shared.last_rx < 500_000_000:
            await asyncio.sleep(0.05)
        slow_info = await self._release_slow(slow) if slow else {}
        stayers = [m for m in self.members if m.role in ("sender", "member")]
        return {
            "sent": {m.cid: m.sent for m in senders},
            "rooms_of_senders": {m.cid: m.room for m in senders},
            "receivers": [
                (m.room, m.receiver.count, m.receiver.errors, m.receiver.cross, m.receiver.last)
                for m in stayers
                if m.client is not None
            ],
            "closed_early": sum(1 for m in stayers if m.client and m.client.closed.done()),
            "stalls": sum(m.stalls for m in senders),
            "lat": [lat.tobytes() for _, _, lat in shared.windows],
            "delivered_in_window": shared.delivered_in_window,
            "frames_in_window": shared.frames_in_window,
            "churn": churn,
            **slow_info,
        }

    async def _send_loop(self, member: Member, sched: dict) -> None:
        client = member.client
        assert client is not None
        pad = " x=" + "x" * sched["pad"] if sched["pad"] else ""
        rate = sched["rate"]
        stop = sched["t_stop"]
        room = member.room

        def say(sent_ns: int) -> None:
            member.sent += 1
            text = load_text(sent_ns, room, member.cid, member.sent, pad)
            client.send_text('{"type":"say","text":"' + text + '"}' if self.json else text)

        if rate <= 0:
            credits = member.credits = asyncio.Semaphore(sched["window"])
            member.progress = monotonic_ns()

            def on_own(_: int) -> None:
                member.progress = monotonic_ns()
                credits.release()

            member.receiver.on_own = on_own
            watchdog = asyncio.ensure_future(self._watchdog(member))
            try:
                while True:
                    await credits.acquire()
                    now = monotonic_ns()
                    if now >= stop or client.closed.done():
                        return
                    say(now)
            finally:
                watchdog.cancel()
                member.receiver.on_own = None
        interval = int(1e9 / rate)
        due = sched["t_start"] + random.randrange(interval)
        while True:
            now = monotonic_ns()
            if now >= stop or client.closed.done():
                return
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
                continue
            say(now)
            due += interval
            if now - due > 1_000_000_000:
                due = now

    async def _watchdog(self, member: Member) -> None:
        """A closed loop whose echo never comes would stop; count it and send again."""
        assert member.credits is not None
        while True:
            await asyncio.sleep(0.5)
            if monotonic_ns() - member.progress > WATCHDOG_NS:
                member.stalls += 1
                member.progress = monotonic_ns()
                member.credits.release()

    async def _pause(self, slow: list[Member], at_ns: int) -> None:
        await _sleep_until(at_ns)
        for member in slow:
            assert member.client is not None
            member.extra["count_at_pause"] = member.receiver.count
            member.client.pause()

    async def _release_slow(self, slow: list[Member]) -> dict:
        """Read again: a relay that dropped the reader has queued its close frame by now."""
        member = slow[0]
        client = member.client
        assert client is not None
        closed_before = client.closed.done()
        client.resume()
        try:
            code = await asyncio.wait_for(asyncio.shield(client.closed), 15.0)
        except TimeoutError:
            code = None
        return {
            "slow_close_code": code,
            "slow_closed_while_paused": closed_before,
            "slow_received": member.receiver.count,
            "slow_received_before_pause": member.extra.get("count_at_pause"),
        }

    async def _churn(self, sched: dict, stats: dict[str, int]) -> None:
        """Connect and drop clients in the room, `concurrency` at a time, until told to stop."""
        spec = sched["churn"]
        stop = sched["t_stop"] - 300_000_000
        next_id = iter(range(spec["first_id"], spec["first_id"] + spec["max_conns"]))
        for key in ("connected", "failed", "errors", "received"):
            stats[key] = 0

        async def lane() -> None:
            for cid in next_id:
                if monotonic_ns() >= stop:
                    return
                member = Member(cid, spec["room"], "churn", Receiver(spec["room"], False))
                if not await self._open(member):
                    stats["failed"] += 1
                    continue
                stats["connected"] += 1
                await asyncio.sleep(random.uniform(0, spec["hold_s"]))
                assert member.client is not None
                member.client.close()
                await asyncio.wait([member.client.closed], timeout=2.0)
                stats["errors"] += member.receiver.errors
                stats["received"] += member.receiver.count

        await asyncio.gather(*(lane() for _ in range(spec["concurrency"])))


async def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


def worker_main(pipe: Pipe, ports: tuple[int, ...], protocol: str, max_seconds: float) -> None:
    """Child process entry: uvloop, a hard alarm so it can never outlive its run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.alarm(int(max_seconds))
    import uvloop

    uvloop.run(Worker(pipe, ports, protocol).serve())
