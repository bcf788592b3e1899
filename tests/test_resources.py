"""What one client may cost the relay: failures kept to one connection, floods, caps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
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
from tests.relayproc import JsonClient, RelayProcess, closed, eventually, metric
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
    count, text = 2500, "s" * 4000  # 10 MB: more than the kernel's buffers on loopback hold
    for i in range(1, count + 1):
        await sender.send(type="say", text=f"{i} {text}")
    await sender.expect("message", seq=count, timeout=30)
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(15) == 0
    assert time.monotonic() - started < DRAIN_SECONDS + 1.0
    sock.close()


def rss_mib(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def answer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the relay sends until it closes the socket."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                data += chunk
    return data


async def test_silent_socket_closed_at_handshake_deadline(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--handshake-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    assert (await answer(reader)).startswith(b"HTTP/1.1 408 ")
    writer.close()
    async with httpx.AsyncClient(base_url=relay.http) as http:
        body = (await http.get("/metrics")).text
    assert metric(body, "chat_handshake_timeouts_total") == 1


@pytest.mark.parametrize("path", ["/healthz", "/chat/slow"])
async def test_slowloris_head_closed_at_handshake_deadline(
    relay_factory: Callable[..., RelayProcess], path: str
) -> None:
    relay = relay_factory("--handshake-timeout", "0.5")
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    head = rawws.upgrade(path)
    got = b""
    loop = asyncio.get_running_loop()
    started = loop.time()
    # One byte of the head every 50 ms: it would take 10 s to finish.
    for byte in head[:-4]:
        writer.write(bytes((byte,)))
        with contextlib.suppress(TimeoutError):
            got = await asyncio.wait_for(reader.read(65536), 0.05)
            break
    assert loop.time() - started < 3
    assert got.startswith(b"HTTP/1.1 408 ")
    await answer(reader)  # returns once the relay closed the socket
    writer.close()


@pytest.mark.parametrize("path", ["/healthz", "/chat/big"])
@pytest.mark.parametrize(("where", "status"), [("line", b"414"), ("headers", b"431")])
async def test_oversized_head_answered_and_closed(
    relay: RelayProcess, path: str, where: str, status: bytes
) -> None:
    filler = "a" * 9000
    head = rawws.upgrade(path + "?x=" + filler if where == "line" else path)
    if where == "headers":
        head = head.replace(b"\r\n\r\n", f"\r\nX-Filler: {filler}\r\n\r\n".encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(head)
    got = await answer(reader)  # returns only once the relay closed the socket
    assert got.startswith(b"HTTP/1.1 " + status + b" "), got[:80]
    writer.close()


async def test_connections_capped_per_address(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory("--max-connections-per-address", "3")
    held = [await JsonClient.connect(relay.url("capped")) for _ in range(3)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await JsonClient.connect(relay.url("capped"))
    assert refused.value.response.status_code == 503
    await held.pop().close()

    async def admitted() -> JsonClient | None:
        with contextlib.suppress(websockets.InvalidStatus):
            return await JsonClient.connect(relay.url("capped"))
        return None

    held.append(await eventually(admitted))
    await held.pop().close()

    async def counted() -> float | None:
        async with httpx.AsyncClient(base_url=relay.http) as http:
            response = await http.get("/metrics")
        found = metric(response.text, 'chat_refused_connections_total{reason="address"}')
        return found if response.status_code == 200 else None

    assert await eventually(counted) >= 1
    for client in held:
        await client.close()


async def test_connections_capped_in_total(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory("--max-connections", "2", "--max-connections-per-address", "0")
    held = [await JsonClient.connect(relay.url("total")) for _ in range(2)]
    with pytest.raises(websockets.InvalidStatus) as refused:
        await JsonClient.connect(relay.url("total"))
    assert refused.value.response.status_code == 503
    async with httpx.AsyncClient(base_url=relay.http) as http:
        assert (await http.get("/healthz")).status_code == 503
    await held.pop().close()

    async def counted() -> float | None:
        async with httpx.AsyncClient(base_url=relay.http) as http:
            response = await http.get("/metrics")
        found = metric(response.text, 'chat_refused_connections_total{reason="capacity"}')
        return found if response.status_code == 200 else None

    assert await eventually(counted) >= 2
    await held.pop().close()


def test_file_descriptor_limit_raised_to_hard(relay_factory: Callable[..., RelayProcess]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        relay = relay_factory()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    limits = Path(f"/proc/{relay.proc.pid}/limits").read_text()
    row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    relay_soft, relay_hard = row.split()[3:5]
    assert relay_soft == relay_hard


async def test_declared_large_body_refused_before_it_is_sent(relay: RelayProcess) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        b"POST /rooms/big/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 200000000\r\n\r\n"
    )
    got = await answer(reader)
    assert got.startswith(b"HTTP/1.1 413 ") and b"too_large" in got
    writer.close()


async def test_streamed_large_body_cut_while_read(relay_factory: Callable[..., RelayProcess]):
    relay = relay_factory()
    before = rss_mib(relay.proc.pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(
        b"POST /rooms/big/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
    response = asyncio.ensure_future(answer(reader, timeout=30))
    sent = 0
    # Up to 200 MB, 64 KiB at a time, until the relay answers or stops taking it.
    with contextlib.suppress(ConnectionError):
        while sent < 200 << 20 and not response.done():
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    got = await response
    assert sent < 32 << 20, "the relay kept reading the body"
    assert got == b"" or got.startswith(b"HTTP/1.1 413 ")
    assert rss_mib(relay.proc.pid) - before < 20
    writer.close()


async def test_ping_flood_without_reading_is_cut(relay_factory: Callable[..., RelayProcess]):
    relay = relay_factory()
    before = rss_mib(relay.proc.pid)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", relay.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(rawws.upgrade("/chat/pings"))
    await reader.readuntil(b"\r\n\r\n")
    witness = await JsonClient.connect(relay.url("pings"))
    # Legal 125-byte pings, a thousand at a time, and never a byte read: up to 100 MB of pongs.
    batch = rawws.frame(0x9, b"p" * 125) * 1000
    sent, cut = 0, False
    try:
        while sent < 100 << 20:
            writer.write(batch)
            await asyncio.wait_for(writer.drain(), 10)
            sent += len(batch)
    except ConnectionError:
        cut = True
    assert cut, "the relay kept answering pings nobody read"
    assert rss_mib(relay.proc.pid) - before < 30
    await witness.send(type="say", text="still here")
    await witness.expect("message", text="still here")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        body = (await http.get("/metrics")).text
    assert metric(body, "chat_ping_floods_total") == 1
    await witness.close()
    writer.close()


async def next_answer(client: JsonClient, mine: str) -> dict[str, Any]:
    """The echo of the client's own message (cid starting with `mine`) or its error."""
    while True:
        event = await client.next()
        if event["type"] == "error" or event.get("cid", "").startswith(mine):
            return event


async def accepted_of(clients: list[JsonClient], tries: int) -> int:
    """Each client says `tries` messages at once; how many the relay accepted in all."""
    for index, client in enumerate(clients):
        for i in range(tries):
            await client.send(type="say", text=f"{index}.{i}", cid=f"{index}.{i}")
    answers = [
        await next_answer(client, f"{index}.")
        for index, client in enumerate(clients)
        for _ in range(tries)
    ]
    assert all(a["type"] == "message" or a["code"] == "rate_limited" for a in answers), answers
    return sum(answer["type"] == "message" for answer in answers)


async def test_rate_is_per_identity_not_per_connection(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--rate", "0.1", "--burst", "4", "--address-rate", "0")
    first = await JsonClient.connect(relay.url("one-token"))
    token = first.welcome["token"]
    clients = [first] + [
        await JsonClient.connect(relay.url("one-token", f"token={token}")) for _ in range(4)
    ]
    # Five connections on one token, four messages each: the identity's burst of four in all.
    assert await accepted_of(clients, 4) == 4
    for client in clients:
        await client.close()


async def test_rate_is_per_address_too(relay_factory: Callable[..., RelayProcess]) -> None:
    args = ("--rate", "100", "--burst", "100", "--address-rate", "0.1", "--address-burst", "6")
    relay = relay_factory(*args)
    clients = [await JsonClient.connect(relay.url("one-address")) for _ in range(3)]
    # Three identities from 127.0.0.1, four messages each: the address's burst of six in all.
    assert await accepted_of(clients, 4) == 6
    async with httpx.AsyncClient(base_url=relay.http) as http:
        post = await http.post("/rooms/one-address/messages", json={"from": "bot", "text": "x"})
    assert post.status_code == 429 and post.json()["error"] == "rate_limited"
    for client in clients:
        await client.close()


async def test_http_posts_are_rate_limited_per_address(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--rate", "0.1", "--burst", "1", "--address-burst", "5")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        codes = [
            (
                await http.post("/rooms/posts/messages", json={"from": "bot", "text": f"{i}"})
            ).status_code
            for i in range(8)
        ]
    assert codes == [201] * 5 + [429] * 3


async def test_read_flood_is_charged_and_closed(relay_factory: Callable[..., RelayProcess]):
    relay = relay_factory("--rate", "1", "--burst", "5")
    flooder = await JsonClient.connect(relay.url("reads"))
    witness = await JsonClient.connect(relay.url("reads"))
    padding = "x" * 60000
    # Padded read markers: once exempt from the rate limit, now a fifth of a message each.
    with contextlib.suppress(websockets.ConnectionClosed):
        for _ in range(200):
            await flooder.send(type="read", seq=0, pad=padding)
    code, reason = await closed(flooder.ws)
    assert code == 1008 and reason.startswith("flood")
    await witness.send(type="say", text="unaffected")
    await witness.expect("message", text="unaffected")
    await witness.close()
