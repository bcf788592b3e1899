"""`chat-relay serve --workers N`: N relay processes on one port, one per core.

Each worker is a whole relay node (`--workers 1`) listening on the same port with
SO_REUSEPORT, so the kernel spreads new connections over them; they are one relay through
Redis, which `--workers` therefore requires. This process only starts them, forwards the stop
signal, and starts again a worker that died, so a crash costs that worker's clients a
reconnect and nothing more.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

# A worker that keeps dying is started again at most this often.
RESTART_SECONDS = 1.0


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) that other processes can bind too (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def supervise(argv: list[str], host: str, port: int, workers: int) -> int:
    """Run `workers` relays on one port until SIGTERM or SIGINT; the exit status."""
    # Bound, never listening: it holds the port (0 picks one) and takes no connections.
    holder = listening_socket(host, port)
    port = holder.getsockname()[1]
    command = [sys.executable, "-m", "relay", *argv, "--workers", "1", "--port", str(port)]
    command.append("--reuse-port")
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        # SIGTERM whatever came: a Ctrl-C in the terminal already sent SIGINT to every worker,
        # and a second SIGINT would make them skip their drain.
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    children = [subprocess.Popen(command) for _ in range(workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = [time.monotonic()] * workers
    while not stopping:
        for index, child in enumerate(children):
            if child.poll() is None or stopping:
                continue
            print(
                f"worker {child.pid} exited with {child.returncode}; starting another", flush=True
            )
            time.sleep(max(0.0, started[index] + RESTART_SECONDS - time.monotonic()))
            if stopping:
                break
            started[index] = time.monotonic()
            children[index] = subprocess.Popen(command)
        time.sleep(0.2)
    codes = [child.wait() for child in children]
    holder.close()
    return max(codes, default=0)
