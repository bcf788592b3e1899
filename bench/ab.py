"""A/B fan-out: this tree's relay beside another checkout's, interleaved, same load generator.

`python -m bench.ab --other PATH` answers one question a change on the message path must
answer: are the fan-out figures still within 10 % of the tree it started from? Each round runs
both relays for each protocol and room size, one after the other, the relay pinned to CPU 0 and
the kit's load generator to CPU 1, so drift on the machine hits both alike; ratios are medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.relays import REFS

ROOT = Path(__file__).resolve().parent.parent
LOADGEN = REFS.parent / "loadgen.py"


def relay_command(tree: Path, port: int, state: str) -> list[str]:
    command = ["taskset", "-c", "0", sys.executable, "-m", "relay", "serve", "--port", str(port)]
    command += ["--rate", "0", "--state-dir", state, "--log-level", "warning"]
    if "max-connections-per-address" in (tree / "relay" / "cli.py").read_text():
        command += ["--max-connections-per-address", "0"]
    return command


def measure(tree: Path, protocol: str, clients: int, seconds: float) -> float:
    with tempfile.TemporaryDirectory() as state:
        relay = subprocess.Popen(
            relay_command(tree, 0, state), cwd=tree, stdout=subprocess.PIPE, text=True
        )
        try:
            assert relay.stdout is not None
            port = 0
            for line in relay.stdout:
                if line.startswith("chat relay on "):
                    port = int(line.split(":")[2].split("/")[0])
                    break
            load = [sys.executable, str(LOADGEN), "fanout", "--port", str(port)]
            load += ["--server-pid", str(relay.pid), "--cpus", "1", "--protocol", protocol]
            load += ["--clients", str(clients), "--senders", "10", "--duration", str(seconds)]
            load += ["--max-seconds", "120"]
            out = subprocess.run(load, capture_output=True, text=True, timeout=180, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            return float(result.get("msgs_per_s") or result["frames_per_s"])
        finally:
            relay.terminate()
            relay.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    parser.add_argument("--other", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    env_note = f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}"
    print(f"# this tree vs {args.other} ({env_note})", flush=True)
    for protocol in ("plain", "chat.v1"):
        for clients in args.n:
            ratios = []
            for _ in range(args.rounds):
                ours = measure(ROOT, protocol, clients, args.seconds)
                theirs = measure(args.other.resolve(), protocol, clients, args.seconds)
                ratios.append(ours / theirs)
                print(f"{protocol} N={clients}: {ours:,.0f} vs {theirs:,.0f} msgs/s", flush=True)
            print(f"{protocol} N={clients}: median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
