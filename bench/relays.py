"""The relays under test: ours (per uvicorn WebSocket implementation) and the kit's references.

Every relay runs as its own process on 127.0.0.1, pinned to the relay CPU with taskset, and
is started fresh for each measurement so memory left over from one run cannot hide in the next.
The references live in the team kit beside the project (`../shared/bench/ref`); the Node one
needs `node` and is skipped without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
REFS = ROOT.parent / "shared" / "bench" / "ref"


@dataclass(frozen=True)
class RelaySpec:
    name: str
    command: tuple[str, ...]  # "{port}" and "{state}" are filled in at start
    protocols: tuple[str, ...]
    ours: bool = False

    def argv(self, port: int, state: str) -> list[str]:
        return [part.format(port=port, state=state) for part in self.command]


def _ours(name: str, ws: str, *extra: str) -> RelaySpec:
    command = (sys.executable, "-m", "relay", "serve", "--port", "{port}", "--rate", "0")
    # Every load client connects from 127.0.0.1: lift the per-address caps for the benchmark.
    command += ("--max-connections-per-address", "0")
    command += ("--state-dir", "{state}", "--log-level", "warning", "--ws", ws, *extra)
    return RelaySpec(name, command, ("chat.v1", "plain"), ours=True)


def _ref(name: str, script: str) -> RelaySpec:
    return RelaySpec(name, (sys.executable, str(REFS / script), "{port}"), ("plain",))


def node_dir() -> Path | None:
    """A copy of the references with `ws` installed (npm ci), or None without node/npm."""
    if not (shutil.which("node") and shutil.which("npm") and (REFS / "package.json").exists()):
        return None
    target = RESULTS / "node-ref"
    if not (target / "node_modules" / "ws").exists():
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json", "node_ws.js"):
            shutil.copyfile(REFS / name, target / name)
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=target, check=False
        )
        if done.returncode != 0:
            return None
    return target


def catalogue() -> dict[str, RelaySpec]:
    relays = {
        "ours": _ours("ours", "websockets-sansio"),
        "ours-wsproto": _ours("ours-wsproto", "wsproto"),
        "ours-websockets": _ours("ours-websockets", "websockets"),
        # The in-memory store, against the default SQLite one (issue 5's 10 % target).
        "ours-memory": _ours("ours-memory", "websockets-sansio", "--db", ":memory:"),
    }
    if REFS.is_dir():
        relays["naive"] = _ref("naive", "naive_starlette.py")
        relays["queued"] = _ref("queued", "starlette_queued.py")
        relays["wsb"] = _ref("wsb", "ws_broadcast.py")
        relays["batched"] = _ref("batched", "ws_batched.py")
        node = node_dir()
        if node is not None:
            relays["node"] = RelaySpec(
                "node", ("node", str(node / "node_ws.js"), "{port}"), ("plain",)
            )
    return relays


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def snapshot_ours(into: Path) -> Path:
    """Copy relay/ and shared/ as they are now, so every repetition measures the same code even
    while the tree is being edited; `python -m relay` run from there imports the copy."""
    if into.exists():
        shutil.rmtree(into)
    for package in ("relay", "shared"):
        shutil.copytree(
            ROOT / package, into / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return into


class RunningRelay:
    """One relay process pinned to `cpu`; stopped (by its own PID only) on exit."""

    def __init__(self, spec: RelaySpec, cpu: int, log_dir: Path, code: Path = ROOT) -> None:
        self.spec = spec
        self.port = free_port()
        self._state = tempfile.TemporaryDirectory(prefix="bench-relay-")
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_dir / f"relay-{spec.name}.log", "ab")  # noqa: SIM115
        argv = spec.argv(self.port, self._state.name)
        preexec = None
        if (os.cpu_count() or 1) > 1 and shutil.which("taskset"):
            argv = ["taskset", "-c", str(cpu), *argv]
        elif (os.cpu_count() or 1) > 1:  # no util-linux: the same affinity call, in the child

            def preexec() -> None:
                os.sched_setaffinity(0, {cpu})

        cwd = code if spec.ours else ROOT
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=self._log, stderr=self._log, preexec_fn=preexec
        )
        self.pid = self.proc.pid
        self._wait_listening()

    def _wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay {self.spec.name} exited with {self.proc.returncode}")
            with socket.socket() as sock:
                sock.settimeout(0.2)
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"relay {self.spec.name} did not listen within {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._state.cleanup()

    def __enter__(self) -> RunningRelay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
