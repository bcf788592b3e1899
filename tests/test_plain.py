"""The plain protocol: exact line forms, as any bare WebSocket client sees them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import websockets

from tests.relayproc import JsonClient, RelayProcess, eventually


async def recv(ws: websockets.ClientConnection, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(ws.recv(), timeout)


def name_of(line: str) -> str:
    name, sep, rest = line.partition(" :: ")
    assert sep and rest == "joined the chat", line
    return name


async def test_join_echo_leave_lines(relay: RelayProcess, room: str) -> None:
    async with websockets.connect(relay.url(room)) as a:
        alice = name_of(await recv(a))
        async with websockets.connect(relay.url(room)) as b:
            bob = name_of(await recv(b))
            assert await recv(a) == f"{bob} :: joined the chat"
            await a.send("hello there")
            assert await recv(a) == f"{alice} :: hello there"
            assert await recv(b) == f"{alice} :: hello there"
        assert await recv(a) == f"{bob} :: left the chat"


async def test_abrupt_disconnect_is_announced(relay: RelayProcess, room: str) -> None:
    async with websockets.connect(relay.url(room)) as a:
        await recv(a)
        b = await websockets.connect(relay.url(room))
        bob = name_of(await recv(b))
        await recv(a)
        b.transport.abort()
        assert await recv(a) == f"{bob} :: left the chat"


async def test_rooms_are_isolated(relay: RelayProcess, room: str) -> None:
    async with (
        websockets.connect(relay.url(room + "a")) as a,
        websockets.connect(relay.url(room + "b")) as b,
    ):
        alice = name_of(await recv(a))
        name_of(await recv(b))
        await b.send("only in b")
        assert (await recv(b)).endswith(":: only in b")
        await a.send("only in a")
        assert await recv(a) == f"{alice} :: only in a"


async def test_empty_room_leaves_listing(relay: RelayProcess, room: str) -> None:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        async with websockets.connect(relay.url(room)) as ws:
            await recv(ws)
            listing = (await http.get("/rooms")).json()["rooms"]
            entry = next(entry for entry in listing if entry["room"] == room)
            assert (entry["members"], entry["connections"]) == (1, 1)

        async def gone() -> bool | None:
            listing = (await http.get("/rooms")).json()["rooms"]
            return True if all(entry["room"] != room for entry in listing) else None

        assert await eventually(gone)


async def test_plain_sees_json_messages_and_renames(relay: RelayProcess, room: str) -> None:
    async with websockets.connect(relay.url(room)) as plain:
        await recv(plain)
        json_client = await JsonClient.connect(relay.url(room))
        old = json_client.welcome["you"]
        assert await recv(plain) == f"{old} :: joined the chat"
        await json_client.send(type="say", text="from json")
        assert await recv(plain) == f"{old} :: from json"
        await json_client.send(type="nick", name=f"n{room}")
        assert await recv(plain) == f"{old} :: is now known as n{room}"
        await json_client.close()
        assert await recv(plain) == f"n{room} :: left the chat"


async def test_asgi_send_path_on_other_websocket_implementations(
    relay_factory: Callable[..., RelayProcess], room: str
) -> None:
    """uvicorn's legacy `websockets` implementation gets plain ASGI sends, not direct writes."""
    relay = relay_factory("--ws", "websockets")
    async with websockets.connect(relay.url(room)) as plain:
        name = name_of(await recv(plain))
        json_client = await JsonClient.connect(relay.url(room))
        await recv(plain)
        for text in ("one", "two", "three"):
            await plain.send(text)
        assert [await recv(plain) for _ in range(3)] == [
            f"{name} :: {t}" for t in ("one", "two", "three")
        ]
        got = [await json_client.expect("message") for _ in range(3)]
        assert [m["seq"] for m in got] == [1, 2, 3]
        await json_client.close()
