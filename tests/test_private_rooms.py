"""Invite-only rooms: members only, every way in; owner controls; kept across restarts."""

from __future__ import annotations

import httpx
import websockets

from shared.protocol import SUBPROTOCOL
from tests.relayproc import JsonClient, RelayProcess, closed


async def named(relay: RelayProcess, room: str, name: str, token: str = "") -> JsonClient:
    client = await JsonClient.connect(relay.url(room, f"token={token}" if token else ""))
    if client.welcome["you"] != name:
        await client.send(type="nick", name=name)
        await client.expect("nick", new=name)
    return client


async def refused(relay: RelayProcess, room: str, token: str = "") -> tuple[int, str]:
    query = f"token={token}" if token else ""
    ws = await websockets.connect(relay.url(room, query), subprotocols=[SUBPROTOCOL])
    return await closed(ws)


async def listed(relay: RelayProcess, token: str = "") -> dict[str, bool]:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        params = {"token": token} if token else {}
        rooms = (await http.get("/rooms", params=params)).json()["rooms"]
    return {room["room"]: room["private"] for room in rooms}


async def test_nobody_outside_gets_in_and_the_owner_decides(relay_factory) -> None:
    relay = relay_factory("--rate", "0")
    olga = await named(relay, "club", "olga")
    pat = await named(relay, "club", "pat")
    await olga.send(type="private", private=True)
    for client in (olga, pat):
        event = await client.expect("private")
        assert (event["private"], event["by"]) == (True, "olga")
    quinn = await named(relay, "lobby", "quinn")
    q_token = quinn.welcome["token"]
    p_token = pat.welcome["token"]

    # Every way in, as a stranger and as a known non-member.
    for token in ("", q_token):
        code, reason = await refused(relay, "club", token)
        assert code == 1008 and "invite-only" in reason
        assert "club" not in await listed(relay, token)
        async with httpx.AsyncClient(base_url=relay.http) as http:
            params = {"token": token} if token else {}
            page = await http.get("/rooms/club/messages", params=params)
            assert (page.status_code, page.json()["error"]) == (403, "not_member")
            post = await http.post("/rooms/club/messages", json={"from": "intruder", "text": "x"})
            assert (post.status_code, post.json()["error"]) == (403, "not_member")

    # Members see it all.
    assert (await listed(relay, p_token))["club"] is True
    async with httpx.AsyncClient(base_url=relay.http) as http:
        page = await http.get("/rooms/club/messages", headers={"X-Chat-Token": p_token})
        assert page.status_code == 200

    # An invitation lets quinn in; the invitee hears about it wherever it is.
    await olga.send(type="invite", name="quinn")
    await pat.expect("invited", name="quinn")
    await quinn.expect("invited", room="club")
    inside = await JsonClient.connect(relay.url("club", f"token={q_token}"))
    assert inside.welcome["private"] is True
    assert inside.welcome["members"] == ["olga", "pat", "quinn"]

    # A kick in an invite-only room is a ban.
    await olga.send(type="kick", name="quinn")
    assert (await closed(inside.ws))[0] == 4001
    assert (await refused(relay, "club", q_token))[0] == 1008

    # Handing the room over: pat owns it and can remove olga for good.
    await olga.send(type="owner", name="pat")
    assert (await pat.expect("owner"))["owner"] == "pat"
    await pat.send(type="remove", name="olga")
    code, reason = await closed(olga.ws)
    assert code == 4001 and "removed" in reason
    o_token = olga.welcome["token"]
    assert (await refused(relay, "club", o_token))[0] == 1008
    await pat.close()
    await quinn.close()

    # Membership and the room's status survive a restart.
    relay.stop()
    again = relay_factory("--rate", "0")
    assert (await refused(again, "club", o_token))[0] == 1008
    pat = await JsonClient.connect(again.url("club", f"token={p_token}"))
    assert pat.welcome["private"] is True and pat.welcome["owner"] == "pat"
    await pat.send(type="private", private=False)
    await pat.expect("private", private=False)
    anyone = await JsonClient.connect(again.url("club"))
    assert anyone.welcome["private"] is False
    for client in (pat, anyone):
        await client.close()


async def test_only_the_owner_controls_the_room(relay: RelayProcess, room: str) -> None:
    owner = await JsonClient.connect(relay.url(room))
    other = await JsonClient.connect(relay.url(room))
    for request in (
        {"type": "private", "private": True},
        {"type": "invite", "name": owner.welcome["you"]},
        {"type": "remove", "name": owner.welcome["you"]},
        {"type": "owner", "name": other.welcome["you"]},
    ):
        await other.send(**request)
        error = await other.expect("error")
        assert (error["code"], error["request"]) == ("not_owner", request["type"])
    for kind in ("invite", "remove"):
        await owner.send(type=kind, name=other.welcome["you"])
        assert (await owner.expect("error"))["code"] == "bad_request"  # open room: no members
    await owner.send(type="private", private="yes")
    assert (await owner.expect("error"))["code"] == "bad_request"
    await owner.close()
    await other.close()


async def test_tui_private_room_commands(relay: RelayProcess, room: str) -> None:
    from tests.test_tui_app import SIZE, connected, has_line, make_app, type_line, until

    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        outsider = await JsonClient.connect(relay.url(f"{room}-lobby"))
        await type_line(pilot, "/private maybe")
        await until(pilot, lambda: has_line(app, room, "usage: /private on|off"))
        await type_line(pilot, "/private on")
        await until(pilot, lambda: has_line(app, room, "made the room invite-only"))
        code, reason = await refused(relay, room, outsider.welcome["token"])
        assert code == 1008 and "invite-only" in reason
        await type_line(pilot, f"/invite {outsider.welcome['you']}")
        await outsider.expect("invited", room=room)
        await until(pilot, lambda: has_line(app, room, f"invited {outsider.welcome['you']}"))
        await type_line(pilot, "/rooms")
        await until(pilot, lambda: has_line(app, room, "invite-only"), what="/rooms line")
        await outsider.close()
