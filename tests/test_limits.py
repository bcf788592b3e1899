"""Bad input, size caps, rate limits and slow consumers, against a real relay."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import httpx
import pytest
import websockets

from tests.relayproc import JsonClient, RelayProcess, closed, eventually, metric


async def recv(ws: websockets.ClientConnection, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(ws.recv(), timeout)


async def still_works(sender: JsonClient, other: JsonClient, text: str) -> None:
    """The sender's connection and the room both still carry messages."""
    await sender.send(type="say", text=text)
    await sender.expect("message", text=text)
    await other.expect("message", text=text)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", "bad_json"),
        ("[]", "bad_json"),
        ("42", "bad_json"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"no": "type"}', "unknown_type"),
        ('{"type": "say", "text": 7}', "bad_request"),
        ('{"type": "say", "text": "x", "cid": {}}', "bad_request"),
        ('{"type": "nick", "name": null}', "bad_request"),
        ('{"type": "dm", "to": "x"}', "bad_request"),
        ('{"type": "history", "before": "yesterday"}', "bad_request"),
        ('{"type": "history", "limit": -1}', "bad_request"),
        ('{"type": "say", "text": ""}', "empty"),
        ("", "bad_json"),
    ],
)
async def test_bad_json_input_answered(relay: RelayProcess, room: str, frame: str, code: str):
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await alice.ws.send(frame)
    error = await alice.expect("error")
    assert error["code"] == code and error["detail"], error
    await still_works(alice, bob, "after " + code)
    assert all(event["type"] != "error" for event in bob.seen)
    await alice.close()
    await bob.close()


async def test_binary_frame_answered(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await alice.ws.send(json.dumps({"type": "say", "text": "as bytes"}).encode())
    assert (await alice.expect("error"))["code"] == "bad_frame"
    await still_works(alice, bob, "after binary")
    async with websockets.connect(relay.url(room)) as plain:
        name = (await recv(plain)).partition(" :: ")[0]
        await plain.send(b"\x00\x01")
        assert (await recv(plain)).startswith("* error bad_frame")
        await plain.send("plain still here")
        assert await recv(plain) == f"{name} :: plain still here"
    await alice.close()
    await bob.close()


async def test_too_large_json_and_plain(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await alice.send(type="say", text="é" * 2049)  # 4098 bytes of UTF-8
    error = await alice.expect("error")
    assert error["code"] == "too_large" and "4096" in error["detail"]
    await alice.send(type="say", text="é" * 2048)
    assert len((await bob.expect("message"))["text"]) == 2048
    async with websockets.connect(relay.url(room)) as plain:
        name = (await recv(plain)).partition(" :: ")[0]
        await plain.send("x" * 4097)
        notice = await recv(plain)
        assert notice.startswith("* error") and "too_large" in notice and "\n" not in notice
        await plain.send("small again")
        assert await recv(plain) == f"{name} :: small again"
    await still_works(alice, bob, "after too large")
    assert all(event.get("text") != "x" * 4097 for event in bob.seen)
    await alice.close()
    await bob.close()


async def test_empty_plain_text_answered(relay: RelayProcess, room: str) -> None:
    async with websockets.connect(relay.url(room)) as plain:
        name = (await recv(plain)).partition(" :: ")[0]
        await plain.send("")
        assert (await recv(plain)).startswith("* error empty")
        await plain.send("   ")
        assert (await recv(plain)).startswith("* error empty")
        await plain.send("ok")
        assert await recv(plain) == f"{name} :: ok"


async def test_frame_past_hard_cap_closes_1009(relay_factory: Callable[..., RelayProcess]):
    relay = relay_factory("--rate", "0", "--max-frame-bytes", "8192")
    alice = await JsonClient.connect(relay.url("r"))
    bob = await JsonClient.connect(relay.url("r"))
    await alice.send(type="say", text="x" * 5000)  # past the message limit, within the frame cap
    assert (await alice.expect("error"))["code"] == "too_large"
    await alice.send(type="say", text="x" * 9000)
    code, _ = await closed(alice.ws)
    assert code == 1009
    await bob.expect("leave", name=alice.welcome["you"])
    await bob.send(type="say", text="room lives on")
    await bob.expect("message", text="room lives on")
    await bob.close()


async def test_rate_limit_then_flood_close(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory("--rate", "1", "--burst", "2")
    flooder = await JsonClient.connect(relay.url("r"))
    bob = await JsonClient.connect(relay.url("r"))
    for i in range(3):
        await flooder.send(type="say", text=f"burst {i}")
    await flooder.expect("message", text="burst 0")
    await flooder.expect("message", text="burst 1")
    error = await flooder.expect("error")
    assert error["code"] == "rate_limited" and error["detail"]
    for i in range(200):
        try:
            await flooder.send(type="say", text=f"flood {i}")
        except websockets.ConnectionClosed:
            break
    code, reason = await closed(flooder.ws)
    assert code == 1008 and reason
    await bob.expect("leave", name=flooder.welcome["you"])
    await bob.send(type="say", text="unaffected")
    message = await bob.expect("message", text="unaffected")
    assert message["seq"] <= 3
    assert all(event.get("type") != "error" for event in bob.seen)
    async with httpx.AsyncClient(base_url=relay.http) as http:
        body = (await http.get("/metrics")).text
    assert metric(body, 'chat_errors_total{code="rate_limited"}') >= 1
    assert metric(body, "chat_floods_total") == 1
    await bob.close()


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("has%20space", ""),
        ("semi%3Bcolon", ""),
        ("x" * 65, ""),
        ("%F0%9F%98%80", ""),  # an emoji is not a letter
        ("ok", "since=-1"),
        ("ok", "since=abc"),
        ("ok", "backlog=1.5"),
    ],
)
async def test_refused_join_closes_1008_with_reason(relay: RelayProcess, path: str, query: str):
    async with websockets.connect(relay.url(path, query)) as ws:
        code, reason = await closed(ws)
    assert code == 1008
    assert reason.strip()


async def test_unicode_room_names_accepted(relay: RelayProcess) -> None:
    async with websockets.connect(relay.url("café-日本.x_1")) as ws:
        assert (await recv(ws)).endswith(" :: joined the chat")
    longest = "ü" * 64
    alice = await JsonClient.connect(relay.url(longest))
    assert alice.welcome["room"] == longest
    await alice.close()


class Reader:
    """Reads a client's events as they arrive, so the client is never the slow one."""

    def __init__(self, client: JsonClient) -> None:
        self.client = client
        self.seqs: list[int] = []
        self.left: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            event = await self.client.next(timeout=30)
            if event["type"] == "message":
                self.seqs.append(event["seq"])
            elif event["type"] == "leave":
                self.left.append(event["name"])
            self._changed.set()

    async def until_seq(self, seq: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.seqs or self.seqs[-1] < seq:
                self._changed.clear()
                await self._changed.wait()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def test_slow_consumer_closed_without_slowing_others(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--rate", "0", "--send-queue-bytes", "65536")
    slow = await JsonClient.connect(relay.url("r"), max_queue=1)
    sender = await JsonClient.connect(relay.url("r"))
    watcher = await JsonClient.connect(relay.url("r"))
    readers = [Reader(sender), Reader(watcher)]
    slow_name = slow.welcome["you"]
    text = "y" * 1000
    loop = asyncio.get_running_loop()
    worst = 0.0
    sent = 0
    # Bounded: the slow socket's kernel buffers plus its queue hold a few MB at most.
    while slow_name not in readers[1].left and sent < 20000:
        started = loop.time()
        for _ in range(20):
            sent += 1
            await sender.send(type="say", text=f"{sent} {text}")
        for reader in readers:
            await reader.until_seq(sent)
        worst = max(worst, loop.time() - started)
    assert slow_name in readers[1].left, "the non-reading client was never dropped"
    for reader in readers:
        assert reader.seqs == list(range(1, sent + 1))
        await reader.stop()
    assert worst < 1.0, f"a batch of 20 messages took {worst:.2f}s to reach the readers"
    code, _ = await closed(slow.ws, timeout=30)
    assert code == 1013
    async with httpx.AsyncClient(base_url=relay.http) as http:

        async def counted() -> float | None:
            value = metric((await http.get("/metrics")).text, "chat_slow_consumers_total")
            return value or None

        assert await eventually(counted) >= 1
    await sender.close()
    await watcher.close()
