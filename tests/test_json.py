"""chat.v1 over a real socket: event fields, identity across connections, nick, dm, history."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tests.relayproc import JsonClient, RelayProcess, eventually

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def assert_recent_ts(ts: str) -> None:
    assert TS.match(ts), ts
    when = datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - when) < timedelta(minutes=1)


async def test_welcome_fields(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    welcome = bob.welcome
    assert welcome["room"] == room
    assert welcome["members"] == sorted([alice.welcome["you"], welcome["you"]])
    assert welcome["seq"] == 0
    assert welcome["epoch"] == alice.welcome["epoch"] and welcome["epoch"]
    assert welcome["token"] and welcome["token"] != alice.welcome["token"]
    limits = welcome["limits"]
    assert limits["max_message_bytes"] == 4096
    assert limits["history"] == 1000
    assert limits["history_page_max"] == 200
    assert "rate_per_second" in limits
    join = await bob.expect("join")
    assert join["room"] == room and join["name"] == welcome["you"]
    assert_recent_ts(join["ts"])
    await alice.close()
    leave = await bob.expect("leave")
    assert leave["room"] == room and leave["name"] == alice.welcome["you"]
    assert_recent_ts(leave["ts"])
    await bob.close()


async def test_message_fields(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await alice.send(type="say", text="héllo 👋", cid="c1")
    await alice.send(type="say", text="second")
    first = await bob.expect("message")
    second = await bob.expect("message")
    assert first["room"] == room
    assert first["from"] == alice.welcome["you"]
    assert first["text"] == "héllo 👋"
    assert first["cid"] == "c1" and "cid" not in second
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["id"] and first["id"] != second["id"]
    assert "replay" not in first
    assert_recent_ts(first["ts"])
    assert await alice.expect("message") == first
    await alice.close()
    await bob.close()


async def test_ids_are_unique_across_rooms(relay: RelayProcess, room: str) -> None:
    one = await JsonClient.connect(relay.url(room + "x"))
    two = await JsonClient.connect(relay.url(room + "y"))
    await one.send(type="say", text="a")
    await two.send(type="say", text="b")
    a, b = await one.expect("message"), await two.expect("message")
    assert a["seq"] == b["seq"] == 1
    assert a["id"] != b["id"]
    await one.close()
    await two.close()


async def test_join_and_leave_per_user_not_per_connection(relay: RelayProcess, room: str) -> None:
    watcher = await JsonClient.connect(relay.url(room))
    first = await JsonClient.connect(relay.url(room))
    await watcher.expect("join", name=first.welcome["you"])
    second = await JsonClient.connect(relay.url(room, f"token={first.welcome['token']}"))
    assert second.welcome["you"] == first.welcome["you"]
    entry = await room_entry(relay, room, connections=3)
    assert (entry["members"], entry["connections"]) == (2, 3)
    await second.close()
    await room_entry(relay, room, connections=2)
    await first.send(type="say", text="still one user")
    # Nothing about the second device may reach the watcher before this message.
    event = await watcher.next()
    assert (event["type"], event["text"]) == ("message", "still one user")
    await first.close()
    leave = await watcher.next()
    assert (leave["type"], leave["name"]) == ("leave", first.welcome["you"])
    await watcher.send(type="say", text="marker")
    assert (await watcher.next())["text"] == "marker"
    await watcher.close()


async def room_entry(relay: RelayProcess, room: str, connections: int) -> dict[str, Any]:
    """The room's /rooms entry once it has `connections` open connections."""

    async def check() -> dict[str, Any] | None:
        async with httpx.AsyncClient(base_url=relay.http) as http:
            listing = (await http.get("/rooms")).json()["rooms"]
        entry = next((entry for entry in listing if entry["room"] == room), None)
        return entry if entry is not None and entry["connections"] == connections else None

    return await eventually(check)


async def test_token_gives_same_name_on_reconnect(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    token = alice.welcome["token"]
    await alice.send(type="nick", name=f"tok-{room}")
    await alice.expect("nick")
    await alice.close()
    again = await JsonClient.connect(relay.url(room, f"token={token}"))
    assert again.welcome["you"] == f"tok-{room}"
    await again.close()
    forged = await JsonClient.connect(relay.url(room, f"token={token}x"))
    assert forged.welcome["you"] != f"tok-{room}"
    await forged.close()


async def test_nick_event_uniqueness_and_validation(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    old = alice.welcome["you"]
    await alice.send(type="nick", name=f"Ann-{room}")
    nick = await bob.expect("nick")
    assert (nick["old"], nick["new"]) == (old, f"Ann-{room}")
    assert_recent_ts(nick["ts"])
    await bob.send(type="nick", name=f"ann-{room}".upper())
    error = await bob.expect("error")
    assert error["code"] == "name_taken" and error["detail"]
    for bad in ["", "x" * 33, "two words", "<b>", "tab\there"]:
        await bob.send(type="nick", name=bad)
        error = await bob.expect("error")
        assert error["code"] == "bad_name", bad
    await bob.send(type="who")
    members = await bob.expect("members")
    assert members == {
        "type": "members",
        "room": room,
        "members": sorted([f"Ann-{room}", bob.welcome["you"]]),
    }
    await alice.close()
    await bob.close()


async def test_cid_retry_is_posted_once(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await alice.send(type="say", text="once", cid="retry-1")
    await alice.send(type="say", text="once", cid="retry-1")
    await alice.send(type="say", text="after")
    first = await alice.expect("message")
    echo = await alice.expect("message")
    assert echo["id"] == first["id"] and echo["seq"] == first["seq"] == 1
    assert (await bob.expect("message"))["cid"] == "retry-1"
    after = await bob.expect("message")
    assert (after["text"], after["seq"]) == ("after", 2)
    await alice.close()
    await bob.close()


async def test_cid_retry_after_reconnect_is_posted_once(relay: RelayProcess, room: str) -> None:
    bob = await JsonClient.connect(relay.url(room))
    alice = await JsonClient.connect(relay.url(room))
    await alice.send(type="say", text="maybe lost", cid="retry-2")
    await alice.expect("message", cid="retry-2")
    assert (await bob.expect("message"))["seq"] == 1
    alice.ws.transport.abort()
    await bob.expect("leave", name=alice.welcome["you"])
    back = await JsonClient.connect(relay.url(room, f"backlog=0&token={alice.welcome['token']}"))
    await back.send(type="say", text="maybe lost", cid="retry-2")
    await back.send(type="say", text="next")
    echo = await back.expect("message")
    assert (echo["cid"], echo["seq"]) == ("retry-2", 1)
    assert (await back.expect("message"))["seq"] == 2
    after = await bob.expect("message")
    assert (after["text"], after["seq"]) == ("next", 2)
    await back.close()
    await bob.close()


async def test_history_request(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    for i in range(1, 31):
        await alice.send(type="say", text=f"m{i}")
    await alice.expect("message", text="m30")
    await alice.send(type="history", before=21, limit=5)
    page = await alice.expect("history")
    assert page["room"] == room
    assert [m["seq"] for m in page["messages"]] == [16, 17, 18, 19, 20]
    assert [m["text"] for m in page["messages"]] == ["m16", "m17", "m18", "m19", "m20"]
    await alice.send(type="history", before=3, limit=500)
    assert [m["seq"] for m in (await alice.expect("history"))["messages"]] == [1, 2]
    await alice.close()


async def test_backlog_on_join(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    for i in range(1, 11):
        await alice.send(type="say", text=f"m{i}")
    await alice.expect("message", text="m10")
    late = await JsonClient.connect(relay.url(room, "backlog=4"))
    assert late.welcome["seq"] == 10
    replay = [await late.next() for _ in range(4)]
    assert [(m["type"], m["seq"], m["replay"]) for m in replay] == [
        ("message", seq, True) for seq in (7, 8, 9, 10)
    ]
    assert (await late.next())["type"] == "join"
    none = await JsonClient.connect(relay.url(room, "backlog=0"))
    assert (await none.next())["type"] == "join"
    for client in (alice, late, none):
        await client.close()
