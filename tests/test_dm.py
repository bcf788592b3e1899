"""Private messages: consent requests, offline delivery, every connection of both sides."""

from __future__ import annotations

from tests.relayproc import JsonClient, RelayProcess


async def pair(relay: RelayProcess, room: str) -> tuple[JsonClient, JsonClient]:
    return await JsonClient.connect(relay.url(room)), await JsonClient.connect(relay.url(room))


async def accepted_pair(relay: RelayProcess, room: str) -> tuple[JsonClient, JsonClient]:
    alice, bob = await pair(relay, room)
    await alice.send(type="dm", to=bob.welcome["you"], text="hello?")
    await bob.expect("dm_request", **{"from": alice.welcome["you"]})
    await bob.send(type="dm_accept", **{"from": alice.welcome["you"]})
    await bob.expect("dm", text="hello?")
    await alice.expect("dm_accepted", by=bob.welcome["you"])
    return alice, bob


async def test_first_dm_is_a_request_held_until_accepted(relay: RelayProcess, room: str) -> None:
    alice, bob = await pair(relay, room)
    a_name, b_name = alice.welcome["you"], bob.welcome["you"]
    await alice.send(type="dm", to=b_name, text="can we talk?")
    echo = await alice.expect("dm", text="can we talk?")
    assert echo["held"] is True and (echo["from"], echo["to"]) == (a_name, b_name)
    await bob.expect("dm_request", **{"from": a_name})
    await alice.send(type="dm", to=b_name, text="second, also held")
    await alice.expect("dm", text="second, also held")
    await bob.send(type="dm_accept", **{"from": a_name})
    first = await bob.expect("dm")
    second = await bob.expect("dm")
    assert [first["text"], second["text"]] == ["can we talk?", "second, also held"]
    await alice.expect("dm_accepted", by=b_name)
    await bob.send(type="dm", to=a_name, text="sure")
    for client in (alice, bob):
        event = await client.expect("dm", text="sure")
        assert (event["from"], event["to"]) == (b_name, a_name) and "held" not in event
    await alice.close()
    await bob.close()


async def test_declined_requests_refuse_further_dms(relay: RelayProcess, room: str) -> None:
    alice, bob = await pair(relay, room)
    a_name = alice.welcome["you"]
    await alice.send(type="dm", to=bob.welcome["you"], text="buy my stuff")
    await bob.expect("dm_request", **{"from": a_name})
    await bob.send(type="dm_decline", **{"from": a_name})
    await alice.expect("dm_declined", by=bob.welcome["you"])
    await alice.send(type="dm", to=bob.welcome["you"], text="please")
    assert (await alice.expect("error"))["code"] == "dm_declined"
    await bob.send(type="dm_accept", **{"from": a_name})
    assert (await bob.expect("error"))["code"] == "bad_request"
    await alice.close()
    await bob.close()


async def test_dm_reaches_every_connection_of_both(relay: RelayProcess, room: str) -> None:
    alice, bob = await accepted_pair(relay, room)
    bob_phone = await JsonClient.connect(relay.url(room + "x", f"token={bob.welcome['token']}"))
    alice_phone = await JsonClient.connect(relay.url(room, f"token={alice.welcome['token']}"))
    await alice.send(type="dm", to=bob.welcome["you"], text="everywhere")
    for client in (alice, alice_phone, bob, bob_phone):
        await client.expect("dm", text="everywhere")
    for client in (alice, alice_phone, bob, bob_phone):
        await client.close()


async def test_dm_to_offline_identity_is_delivered_on_connect(
    relay: RelayProcess, room: str
) -> None:
    alice, bob = await accepted_pair(relay, room)
    token = bob.welcome["token"]
    await bob.close()
    await alice.expect("leave", name=bob.welcome["you"])
    await alice.send(type="dm", to=bob.welcome["you"], text="while you were out")
    assert (await alice.expect("dm", text="while you were out"))["queued"] is True
    back = await JsonClient.connect(relay.url(room + "other", f"token={token}"))
    assert back.welcome["you"] == bob.welcome["you"]
    assert (await back.expect("dm"))["text"] == "while you were out"
    again = await JsonClient.connect(relay.url(room, f"token={token}"))
    await again.send(type="who")
    await again.expect("members")
    assert all(event["type"] != "dm" for event in again.seen)
    for client in (alice, back, again):
        await client.close()


async def test_dm_to_unknown_name(relay: RelayProcess, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    await alice.send(type="dm", to="nobody-ever", text="hi")
    assert (await alice.expect("error"))["code"] == "no_such_user"
    await alice.close()
