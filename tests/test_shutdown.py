"""Graceful shutdown and the command line."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import pytest
import websockets

from tests.relayproc import JsonClient, RelayProcess, closed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_flushes_then_closes_1001(
    relay_factory: Callable[..., RelayProcess], sig: signal.Signals
) -> None:
    relay = relay_factory("--rate", "0", "--send-queue-bytes", str(16 << 20))
    sender = await JsonClient.connect(relay.url("r"))
    # Not reading while the relay queues for it: what is queued at the signal must still arrive.
    # A small receive buffer keeps most of the backlog in the relay's queue, not in the kernel.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.connect(("127.0.0.1", relay.port))
    lagging = await JsonClient.connect(relay.url("r"), max_queue=1, sock=sock)
    plain = await websockets.connect(relay.url("other"))
    count, text = 6000, "z" * 1000
    for i in range(1, count + 1):
        await sender.send(type="say", text=f"{i} {text}")
    await sender.expect("message", seq=count, timeout=20)
    relay.proc.send_signal(sig)
    seqs = []
    while not seqs or seqs[-1] < count:
        event = await lagging.expect("message", timeout=10)
        seqs.append(event["seq"])
    assert seqs == list(range(1, count + 1))
    for ws in (lagging.ws, plain, sender.ws):
        code, reason = await closed(ws, timeout=10)
        assert code == 1001 and reason == "going away"
    assert relay.proc.wait(15) == 0  # one signal only: stop() would send a second


def test_version() -> None:
    script = Path(sys.executable).with_name("chat-relay")
    done = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    assert done.stdout.strip() == version("terminal-chat")


async def test_environment_sets_options_and_flags_win(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    env = {"CHAT_RELAY_MAX_MESSAGE_BYTES": "123", "CHAT_RELAY_HISTORY": "7"}
    relay = relay_factory("--history", "9", env=env)
    client = await JsonClient.connect(relay.url("env"))
    limits = client.welcome["limits"]
    assert (limits["max_message_bytes"], limits["history"]) == (123, 9)
    await client.close()


def test_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seen = []
    for _ in range(2):
        relay = RelayProcess(state)
        assert relay.stop() == 0
        seen.append((state / "secret").read_bytes())
    assert len(seen[0]) == 32 and seen[0] == seen[1]
    assert (state / "secret").stat().st_mode & 0o777 == 0o600
