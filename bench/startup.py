"""`python -m bench.startup`: how long the client's one-shot commands take, start to exit.

A script that posts one message pays the interpreter's start and every import at each call,
so what matters is the wall time of the whole process, beside curl making the same request.
Each command runs `--runs` times, interleaved (so load on the machine falls on all of them
alike); the median wall time and CPU time (user + system of the child, from wait4) are
printed as a Markdown table. `--tree DIR` also runs every `chat-tui` command from another
source tree (e.g. an older commit exported with `git archive`) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.relays import RunningRelay, catalogue

CHAT_TUI = str(Path(sys.executable).with_name("chat-tui"))
ROOM = "bench-startup"


@dataclass
class Command:
    label: str
    argv: list[str]
    tree: str = "this tree"
    stdin: bytes = b""
    env: dict[str, str] = field(default_factory=dict)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)

    def run(self, base_env: dict[str, str], cwd: str) -> None:
        """From `cwd` outside the repo: `python -c` puts the working directory first on the
        path, which would import this tree even when timing another."""
        start = time.perf_counter()
        proc = subprocess.Popen(
            self.argv,
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**base_env, **self.env},
        )
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(self.stdin)
        proc.stdin.close()
        _, status, usage = os.wait4(proc.pid, 0)
        self.walls.append(time.perf_counter() - start)
        self.cpus.append(usage.ru_utime + usage.ru_stime)
        errors = proc.stderr.read().decode(errors="replace").strip()
        proc.stderr.close()
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{self.label} ({self.tree}) failed: {errors}")


def commands(server: str, http: str, tree: Path | None) -> list[Command]:
    common = ["--server", server]
    chat_tui = [
        ("python -c 'import tui.cli'", [sys.executable, "-c", "import tui.cli"], b""),
        ("chat-tui send", [CHAT_TUI, *common, "send", ROOM, "hello", "--from", "bench"], b""),
        ("chat-tui rooms", [CHAT_TUI, *common, "rooms"], b""),
        ("chat-tui --plain connect", [CHAT_TUI, *common, "--plain", "connect", ROOM], b"hi\n"),
    ]
    found: list[Command] = []
    trees = [("this tree", {})]
    if tree is not None:
        trees.insert(0, (str(tree), {"PYTHONPATH": str(tree)}))
    for name, env in trees:
        found += [Command(label, argv, name, stdin, env) for label, argv, stdin in chat_tui]
    found.append(Command("python -c pass (the floor)", [sys.executable, "-c", "pass"], "-"))
    curl = shutil.which("curl")
    if curl is not None:
        body = json.dumps({"from": "bench", "text": "hello"})
        url = f"{http}/rooms/{ROOM}/messages"
        argv = [curl, "-sf", "-o", "/dev/null", "-H", "content-type: application/json"]
        found.append(Command("curl POST (same request as send)", [*argv, "-d", body, url], "-"))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=15, help="runs of each command")
    parser.add_argument("--tree", type=Path, help="also run chat-tui from this source tree")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as home:
        env = {**os.environ, "XDG_STATE_HOME": home, "XDG_CONFIG_HOME": home}
        with RunningRelay(catalogue()["ours"], cpu=0, log_dir=Path(home) / "logs") as relay:
            server, http = f"ws://127.0.0.1:{relay.port}", f"http://127.0.0.1:{relay.port}"
            todo = commands(server, http, args.tree)
            for command in todo:  # warm the page cache and .pyc files; not counted
                command.run(env, home)
                command.walls.clear()
                command.cpus.clear()
            for _ in range(args.runs):
                for command in todo:
                    command.run(env, home)
    print(f"median of {args.runs} runs each, interleaved; {os.cpu_count()} CPUs")
    print()
    print("| command | code | wall ms | CPU ms |")
    print("|---|---|---:|---:|")
    for command in todo:
        wall = statistics.median(command.walls) * 1000
        cpu = statistics.median(command.cpus) * 1000
        print(f"| {command.label} | {command.tree} | {wall:.0f} | {cpu:.0f} |")


if __name__ == "__main__":
    main()
