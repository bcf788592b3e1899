"""Room owners (topic, kick, close) and read markers."""

from __future__ import annotations

import httpx
import pytest
import websockets

from tests.relayproc import JsonClient, RelayProcess


async def test_first_joiner_owns_and_sets_topic(relay: RelayProcess, room: str) -> None:
    owner = await JsonClient.connect(relay.url(room))
    assert owner.welcome["owner"] == owner.welcome["you"]
    guest = await JsonClient.connect(relay.url(room))
    assert guest.welcome["owner"] == owner.welcome["you"]
    await guest.send(type="topic", text="mine now")
    assert (await guest.expect("error"))["code"] == "not_owner"
    await owner.send(type="topic", text="release planning")
    for client in (owner, guest):
        event = await client.expect("topic")
        assert (event["topic"], event["by"]) == ("release planning", owner.welcome["you"])
    late = await JsonClient.connect(relay.url(room))
    assert late.welcome["topic"] == "release planning"
    async with httpx.AsyncClient(base_url=relay.http) as http:
        listing = (await http.get("/rooms")).json()["rooms"]
    entry = next(entry for entry in listing if entry["room"] == room)
    assert (entry["topic"], entry["owner"]) == ("release planning", owner.welcome["you"])
    for client in (owner, guest, late):
        await client.close()


async def test_kick_closes_only_the_target(relay: RelayProcess, room: str) -> None:
    owner = await JsonClient.connect(relay.url(room))
    target = await JsonClient.connect(relay.url(room))
    name = target.welcome["you"]
    await target.send(type="kick", name=owner.welcome["you"])
    assert (await target.expect("error"))["code"] == "not_owner"
    await owner.send(type="kick", name=name)
    assert (await owner.expect("kick", name=name))["by"] == owner.welcome["you"]
    await owner.expect("leave", name=name)
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await target.next()
    assert closed.value.rcvd.code == 4001
    await owner.send(type="say", text="still here")
    await owner.expect("message", text="still here")
    await owner.close()


async def test_close_disconnects_everyone_and_deletes_history(
    relay: RelayProcess, room: str
) -> None:
    owner = await JsonClient.connect(relay.url(room))
    guest = await JsonClient.connect(relay.url(room))
    await owner.send(type="say", text="soon gone")
    await guest.expect("message", text="soon gone")
    old_epoch = owner.welcome["epoch"]
    await guest.send(type="close")
    assert (await guest.expect("error"))["code"] == "not_owner"
    await owner.send(type="close")
    for client in (owner, guest):
        await client.expect("closed", by=owner.welcome["you"])
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await client.next()
        assert closed.value.rcvd.code == 4002
    fresh = await JsonClient.connect(relay.url(room))
    assert fresh.welcome["seq"] == 0 and fresh.welcome["epoch"] != old_epoch
    assert fresh.welcome["owner"] == fresh.welcome["you"]
    await fresh.close()


async def test_read_marker_broadcast_and_kept(relay: RelayProcess, room: str) -> None:
    reader = await JsonClient.connect(relay.url(room))
    other = await JsonClient.connect(relay.url(room))
    for text in ("one", "two"):
        await other.send(type="say", text=text)
        await reader.expect("message", text=text)
    await reader.send(type="read", seq=2)
    seen = await other.expect("read", name=reader.welcome["you"])
    assert (seen["room"], seen["seq"]) == (room, 2)
    await reader.send(type="read", seq="x")
    assert (await reader.expect("error"))["code"] == "bad_request"
    device = await JsonClient.connect(relay.url(room, f"token={reader.welcome['token']}"))
    assert device.welcome["read"] == 2
    for client in (reader, other, device):
        await client.close()
