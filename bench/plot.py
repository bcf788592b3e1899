"""The picture in docs/performance.md: delivered msgs/s (max) and p99 (fixed load) against N."""

from __future__ import annotations

from pathlib import Path

from bench.report import Results, msgs, p99


def plot(res: Results, path: Path) -> bool:
    """Write a PNG; False when there are not enough fan-out runs to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted({r["n"] for r in res.select(set="fanout")})
    labels = res.labels(set="fanout")
    if not ns or not labels:
        return False
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in labels:
        style = "-o" if label.startswith("ours") else "--s"
        ys = [res.value(msgs, set="fanout", mode="max", n=n, label=label) for n in ns]
        left.plot(ns, ys, style, label=label)
        ys = [res.value(p99, set="fanout", mode="fixed", n=n, label=label) for n in ns]
        right.plot(ns, ys, style, label=label)
    left.set(
        xscale="log",
        xlabel="clients in the room (N)",
        ylabel="delivered msgs/s",
        title="max throughput (closed loop, 10 senders)",
    )
    right.set(
        xscale="log",
        yscale="log",
        xlabel="clients in the room (N)",
        ylabel="p99 ms",
        title="p99 latency at 20k deliveries/s",
    )
    for ax in (left, right):
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
