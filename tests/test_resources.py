"""What one client may cost the relay: failures kept to one connection, floods, caps."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from relay.cli import DRAIN_SECONDS
from relay.connection import Connection
from relay.core import Client, Hub, Limits, Outgoing
from relay.direct import Flusher
from relay.store import MemoryStore
from relay.tokens import TokenSigner
from tests import rawws
from tests.relayproc import JsonClient, RelayProcess, metric
from tests.test_core import Recorder


class Broken(Client):
    """A client whose delivery raises, as a bug or an unencodable event would."""

    def __init__(self) -> None:
        super().__init__(True)
        self.closed: tuple[int, str, bool] | None = None

    def deliver(self, event: Outgoing) -> bool:
        if event.data["type"] != "message":
            return True
        raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")

    def close(self, code: int, reason: str, flush: bool) -> None:
        self.closed = (code, reason, flush)


def test_failing_delivery_does_not_stop_fanout() -> None:
    hub = Hub(MemoryStore(100), TokenSigner(b"test-secret"), Limits(rate=0.0))
    first, broken, last = Recorder(), Broken(), Recorder()
    hub.join(first, "r")
    hub.join(broken, "r")
    hub.join(last, "r")
    hub.receive(first, '{"type": "say", "text": "still delivered"}')
    for client in (first, last):
        assert [event["text"] for event in client.of("message")] == ["still delivered"]
    assert broken.closed == (1011, "internal error", False)
    assert broken not in hub.clients and hub.metrics.internal_errors == 1
    hub.receive(last, '{"type": "say", "text": "and after"}')
    assert first.of("message")[-1]["text"] == "and after"


class Sends:
    """An ASGI `send` that keeps what it is given and says when a close went out."""

    def __init__(self) -> None:
        self.messages: list[MutableMapping[str, Any]] = []
        self.closed = asyncio.Event()

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        self.messages.append(message)
        if message["type"] == "websocket.close":
            self.closed.set()


class Flushed(Connection):
    __slots__ = ("done",)

    def __init__(self, send: Sends, flusher: Flusher, explode: bool) -> None:
        super().__init__(send, True, 1 << 20, flusher)
        self.done = asyncio.Event() if not explode else None

    def flush(self) -> None:
        if self.done is None:
            raise RuntimeError("boom")
        self.done.set()


async def test_failing_flush_does_not_stop_other_flushes() -> None:
    flusher = Flusher()
    sends = [Sends() for _ in range(3)]
    connections = [Flushed(send, flusher, explode=index == 1) for index, send in enumerate(sends)]
    for connection in connections:
        flusher.mark(connection)
    for connection in (connections[0], connections[2]):
        assert connection.done is not None
        await asyncio.wait_for(connection.done.wait(), 5)
    await asyncio.wait_for(sends[1].closed.wait(), 5)
    assert sends[1].messages[-1]["code"] == 1011
    assert not sends[0].closed.is_set() and not sends[2].closed.is_set()


async def test_metric_families_do_not_collide(relay: RelayProcess) -> None:
    """A counter `X_total` is family `X` to Prometheus clients: no other family may be `X`."""
    async with httpx.AsyncClient(base_url=relay.http) as http:
        body = (await http.get("/metrics")).text
    families: dict[str, str] = {}
    for line in body.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            families[name] = kind
    bases = [name.removesuffix("_total") for name, kind in families.items() if kind == "counter"]
    assert len(bases) == len(set(bases))
    assert not set(bases) & {name for name, kind in families.items() if kind != "counter"}


async def test_keepalive_flags_close_a_silent_peer_with_1011(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--ws-ping-interval", "0.2", "--ws-ping-timeout", "0.3")
    reader, writer = await rawws.connect(relay.port, "/chat/keepalive")
    # The peer never answers the relay's ping, as one that vanished without closing would not.
    assert await rawws.close_code(reader) == 1011
    writer.close()


async def write_path_works(relay: RelayProcess, room: str) -> str:
    """Messages flow on both protocols; the write path /metrics reports."""
    alice = await JsonClient.connect(relay.url(room))
    async with websockets.connect(relay.url(room)) as plain:
        await asyncio.wait_for(plain.recv(), 5)  # its own join
        await alice.send(type="say", text="over this path")
        await alice.expect("message", text="over this path")
        line = await asyncio.wait_for(plain.recv(), 5)
        assert line == f"{alice.welcome['you']} :: over this path"
        await plain.send("plain too")
        await alice.expect("message", text="plain too")
    await alice.close()
    async with httpx.AsyncClient(base_url=relay.http) as http:
        body = (await http.get("/metrics")).text
    paths = [
        path for path in ("direct", "asgi") if metric(body, f'chat_write_path{{path="{path}"}}')
    ]
    assert len(paths) == 1, body
    return paths[0]


async def test_write_path_direct_by_default(relay: RelayProcess, room: str) -> None:
    assert await write_path_works(relay, room) == "direct"


@pytest.mark.parametrize("way", ["websockets", "trace", "no-sansio-module"])
async def test_write_path_falls_back_to_asgi_sends(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path, way: str
) -> None:
    env: dict[str, str] = {}
    args = ["--ws", "websockets"]
    if way == "trace":
        args = ["--log-level", "trace"]
    elif way == "no-sansio-module":
        # As if a uvicorn release had moved the private module relay/direct.py looks for.
        (tmp_path / "sitecustomize.py").write_text(
            "import sys\n"
            "sys.modules['uvicorn.protocols.websockets.websockets_sansio_impl'] = None\n"
        )
        env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    relay = relay_factory(*args, env=env)
    assert await write_path_works(relay, "fallback") == "asgi"
    assert "Traceback" not in relay.stderr_text()


async def test_sigterm_exits_within_drain_deadline_despite_stalled_reader(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--rate", "0", "--send-queue-bytes", str(64 << 20))
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", relay.port))
    sock.sendall(rawws.upgrade("/chat/stalled"))
    # Never read again: what the relay sends piles up in its transport, close frame included.
    sender = await JsonClient.connect(relay.url("stalled"))
    count, text = 8000, "s" * 1000
    for i in range(1, count + 1):
        await sender.send(type="say", text=f"{i} {text}")
    await sender.expect("message", seq=count, timeout=30)
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(15) == 0
    assert time.monotonic() - started < DRAIN_SECONDS + 1.0
    sock.close()
