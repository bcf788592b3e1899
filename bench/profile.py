"""`python -m bench.profile`: where our relay's CPU goes under fan-out load, via py-spy.

Starts our relay pinned to CPU 0, fills a room, then samples the relay with `py-spy record`
while the load generator (CPU 1) runs the closed loop, and prints the functions with the most
samples: self (the function itself was running, incl. the syscalls it made) and total (it was
on the stack). py-spy is installed into the environment when missing.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench.loadgen import LoadGen, settle
from bench.relays import RESULTS, RunningRelay, catalogue, snapshot_ours
from bench.runner import LOADGEN_CPU, RELAY_CPU
from bench.scenarios import _rates, _schedule, _spread

_LINE = re.compile(r":\d+\)$")


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists() and importlib.util.find_spec("py_spy") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return found


def summarize(raw: Path, top: int) -> str:
    """Self and total sample shares per function, from py-spy's collapsed-stack output."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:7.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    ap.add_argument("--relay", default="ours", help="ours, ours-wsproto or ours-websockets")
    ap.add_argument("--protocol", default="chat.v1", choices=["chat.v1", "plain"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=10)
    ap.add_argument(
        "--rooms",
        type=int,
        default=1,
        help="R > 1: R rooms of N clients, all of them sending (the rooms scenario)",
    )
    ap.add_argument("--rate", type=float, default=0.0, help="per sender; 0 = closed loop")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--phase",
        choices=["load", "join"],
        default="load",
        help="sample the measured load (default) or the room filling up",
    )
    args = ap.parse_args()
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {LOADGEN_CPU})
    spy = py_spy()
    code = snapshot_ours(RESULTS / "snapshot-profile")
    shape = f"{args.rooms}x{args.n}" if args.rooms > 1 else str(args.n)
    raw = RESULTS / f"profile-{args.relay}-{args.protocol}-{shape}-{args.phase}.txt"
    spec = catalogue()[args.relay]
    with RunningRelay(spec, RELAY_CPU, RESULTS / "logs", code) as relay:
        chosen = _spread(args.n, args.senders)
        specs = [(i, "prof", "sender" if i in chosen else "member") for i in range(args.n)]
        if args.rooms > 1:
            specs = [
                (r * args.n + i, f"prof{r}", "sender")
                for r in range(args.rooms)
                for i in range(args.n)
            ]
        spy_cmd = [
            spy,
            "record",
            "--pid",
            str(relay.pid),
            "--format",
            "raw",
            "--rate",
            "200",
            "--gil",
        ]
        spy_cmd += ["--output", str(raw)]
        with LoadGen(relay.port, args.protocol, relay.pid) as lg:
            if args.phase == "join":
                recorder = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL)
                joined = lg.connect(specs)
                recorder.send_signal(signal.SIGINT)
                recorder.wait(timeout=60)
                print(f"{args.relay}/{args.protocol} N={args.n}: fill {joined['fill_s']:.2f} s")
            else:
                lg.connect(specs)
                settle(relay.pid)
                sched = _schedule(0.5, args.seconds, rate=args.rate)
                spy_cmd += ["--duration", str(int(args.seconds))]
                recorder = subprocess.Popen(spy_cmd, stdout=subprocess.DEVNULL)
                results, samples = lg.run(sched)
                recorder.wait(timeout=60)
                print(f"{args.relay}/{args.protocol} N={args.n}: {_rates(results, sched, samples)}")
            lg.close()
    print(summarize(raw, args.top))


if __name__ == "__main__":
    main()
