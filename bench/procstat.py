"""Reading a process's CPU time and memory from /proc (Linux only, like the relay's deploys)."""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def machine_busy_seconds() -> tuple[float, float]:
    """(busy outside interrupts, busy in irq/softirq) CPU seconds of all cores so far.

    With the relay's and the load generator's time subtracted, the first is other work on
    the machine (noise); the second is mostly the loopback TCP path of our own traffic, which
    the kernel charges to no process.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    idle, irq = fields[3] + fields[4], fields[5] + fields[6]
    return (sum(fields) - idle - irq) / _TICK, irq / _TICK
