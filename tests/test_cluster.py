"""Several relay processes on one real Redis behave as one relay (issue 11).

Every test starts its own `redis-server` on an ephemeral port and two or three relays on it,
and talks to them with real WebSocket and HTTP clients.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import websockets

from shared.protocol import SUBPROTOCOL
from tests.redisproc import RedisProcess
from tests.relayproc import JsonClient, RelayProcess, closed, eventually, metric

NODE_TTL = "1.5"


def nodes(
    relay_factory: Callable[..., RelayProcess], redis: RedisProcess, count: int, *extra: str
) -> list[RelayProcess]:
    args = ("--rate", "0", "--redis", redis.url, "--node-ttl", NODE_TTL, *extra)
    return [relay_factory(*args) for _ in range(count)]


async def test_messages_reach_every_node_in_one_order(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    relays = nodes(relay_factory, redis_server, 3)
    clients = [await JsonClient.connect(relay.url("r")) for relay in relays for _ in range(2)]
    per_client = 20

    async def talk(client: JsonClient, index: int) -> None:
        for n in range(per_client):
            await client.send(type="say", text=f"{index}:{n}")

    await asyncio.gather(*(talk(client, index) for index, client in enumerate(clients)))
    total = per_client * len(clients)
    orders = []
    for client in clients:
        got = []
        while len(got) < total:
            got.append(await client.expect("message"))
        assert [m["seq"] for m in got] == list(range(1, total + 1))
        orders.append([m["text"] for m in got])
    assert all(order == orders[0] for order in orders), "one order for every member"
    for index in range(len(clients)):
        mine = [text for text in orders[0] if text.startswith(f"{index}:")]
        assert mine == [f"{index}:{n}" for n in range(per_client)]


async def test_presence_names_and_history_cover_every_node(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    alice = await JsonClient.connect(a.url("r"))
    await alice.send(type="nick", name="alice")
    await alice.expect("nick", new="alice")
    await alice.send(type="say", text="before bob")
    await alice.expect("message", text="before bob")
    bob = await JsonClient.connect(b.url("r"))
    assert "alice" in bob.welcome["members"]
    assert [m["text"] for m in bob.events if m["type"] == "message"] == ["before bob"]
    joined = await alice.expect("join")
    assert joined["name"] == bob.welcome["you"]
    # A name held on one node is taken on every node.
    await bob.send(type="nick", name="Alice")
    error = await bob.expect("error")
    assert error["code"] == "name_taken"
    await bob.send(type="who")
    members = await bob.expect("members")
    assert set(members["members"]) == {"alice", bob.welcome["you"]}
    async with httpx.AsyncClient() as http:
        for node in (a, b):
            listing = (await http.get(f"{node.http}/rooms")).json()["rooms"]
            assert [(r["room"], r["members"], r["connections"]) for r in listing] == [("r", 2, 1)]
    await bob.close()
    left = await alice.expect("leave")
    assert left["name"] == bob.welcome["you"]


async def test_dms_cross_nodes(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    alice = await JsonClient.connect(a.url("r"))
    bob = await JsonClient.connect(b.url("elsewhere"))
    await alice.send(type="dm", to=bob.welcome["you"], text="hello bob")
    held = await alice.expect("dm")
    assert held.get("held") is True
    await bob.expect("dm_request", **{"from": alice.welcome["you"]})
    await bob.send(type="dm_accept", **{"from": alice.welcome["you"]})
    first = await bob.expect("dm")
    assert first["text"] == "hello bob"
    await alice.expect("dm_accepted", by=bob.welcome["you"])
    await alice.send(type="dm", to=bob.welcome["you"], text="again")
    again = await bob.expect("dm", text="again")
    assert again["from"] == alice.welcome["you"]
    echo = await alice.expect("dm", text="again")
    assert not echo.get("held") and not echo.get("queued")
    # Offline: kept in Redis, and handed over on whichever node bob comes back to.
    await bob.close()
    await alice.send(type="dm", to=bob.welcome["you"], text="while you were away")
    queued = await alice.expect("dm", text="while you were away")
    assert queued.get("queued") is True
    back = await JsonClient.connect(a.url("r", f"token={bob.welcome['token']}"))
    kept = await back.expect("dm", text="while you were away")
    assert kept["from"] == alice.welcome["you"]


async def test_a_killed_node_s_clients_resume_elsewhere_and_its_members_leave(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    watcher = await JsonClient.connect(a.url("r"))
    doomed = await JsonClient.connect(b.url("r"))
    await watcher.expect("join", name=doomed.welcome["you"])
    for n in range(5):
        await watcher.send(type="say", text=f"m{n}")
    got = [await doomed.expect("message") for _ in range(5)]
    last, epoch = got[-1]["seq"], doomed.welcome["epoch"]
    b.stop(signal.SIGKILL)
    for n in range(5, 8):
        await watcher.send(type="say", text=f"m{n}")
    await watcher.expect("message", text="m7")
    # The client resumes through another node with what it last saw: no gap, no duplicate.
    resumed = await JsonClient.connect(
        a.url("r", f"token={doomed.welcome['token']}&since={last}&epoch={epoch}")
    )
    assert resumed.welcome["recovered"] is True
    assert resumed.welcome["you"] == doomed.welcome["you"]
    replay = [e for e in resumed.events if e["type"] == "message"]
    assert [m["text"] for m in replay] == ["m5", "m6", "m7"]
    await resumed.close()
    # The dead node's member leaves once its heartbeat lapses (NODE_TTL), with a leave event.
    left = await watcher.expect("leave", timeout=10, name=doomed.welcome["you"])
    assert left["room"] == "r"


async def test_redis_stop_refuses_then_resumes_without_loss(
    tmp_path: Path, relay_factory: Callable[..., RelayProcess]
) -> None:
    # What was acknowledged survives a Redis restart only if Redis keeps it (docs/scaling.md).
    redis = RedisProcess(tmp_path / "aof", appendonly=True)
    try:
        a, b = nodes(relay_factory, redis, 2)
        alice = await JsonClient.connect(a.url("r"))
        bob = await JsonClient.connect(b.url("r"))
        await alice.send(type="say", text="kept 1")
        await bob.expect("message", text="kept 1")
        redis.stop()
        await alice.send(type="say", text="while down", cid="c-down")
        error = await alice.expect("error")
        assert (error["code"], error["request"], error["cid"]) == ("unavailable", "say", "c-down")
        # A newcomer is told to come back later rather than admitted into a room it cannot use.
        refused = await websockets.connect(b.url("r"), subprotocols=[SUBPROTOCOL])
        code, reason = await closed(refused)
        assert code == 1013 and "try again" in reason
        async with httpx.AsyncClient(base_url=a.http) as http:
            health = await http.get("/healthz")
            assert health.status_code == 503 and "redis" in health.json()["reason"]
            assert metric((await http.get("/metrics")).text, "chat_store_healthy") == 0
            redis.start()

            async def healthy() -> bool | None:
                for node in (a, b):
                    if (await http.get(f"{node.http}/healthz")).status_code != 200:
                        return None
                return True

            await eventually(healthy, timeout=15)
            assert metric((await http.get("/metrics")).text, "chat_backplane_healthy") == 1
        await alice.send(type="say", text="kept 2")
        got = await bob.expect("message", text="kept 2", timeout=10)
        assert got["seq"] == 2
        history = httpx.get(f"{b.http}/rooms/r/messages").json()["messages"]
        assert [m["text"] for m in history] == ["kept 1", "kept 2"]
    finally:
        redis.stop()


async def test_redis_that_comes_back_empty_starts_rooms_anew(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    alice = await JsonClient.connect(a.url("r"))
    bob = await JsonClient.connect(b.url("r"))
    await alice.send(type="say", text="before")
    await bob.expect("message", text="before")
    # No persistence: the restarted Redis has no history, so the old epoch cannot go on.
    redis_server.stop()
    redis_server.start()
    code, reason = await closed(bob.ws, timeout=15)
    assert code == 1012 and "join again" in reason
    again = await JsonClient.connect(
        b.url("r", f"token={bob.welcome['token']}&since=1&epoch={bob.welcome['epoch']}")
    )
    assert again.welcome["recovered"] is False and again.welcome["epoch"] != bob.welcome["epoch"]
    assert again.welcome["you"] == bob.welcome["you"]


async def test_workers_share_one_port_as_one_relay(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    relay = relay_factory("--rate", "0", "--redis", redis_server.url, "--workers", "2")
    seen: set[str] = set()
    async with httpx.AsyncClient(base_url=relay.http) as http:
        for _ in range(200):
            # A new connection each time: the kernel spreads them over the workers.
            response = await http.get("/healthz", headers={"Connection": "close"})
            seen.add(response.json()["node"])
            if len(seen) == 2:
                break
    assert len(seen) == 2, "both workers answer on the one port"
    clients = [await JsonClient.connect(relay.url("r")) for _ in range(6)]
    for index, client in enumerate(clients):
        await client.send(type="say", text=f"from {index}")
    for client in clients:
        got = [await client.expect("message") for _ in clients]
        assert [m["seq"] for m in got] == list(range(1, len(clients) + 1))
    assert relay.stop() == 0


async def test_owner_actions_reach_members_on_other_nodes(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    owner = await JsonClient.connect(a.url("r"))
    assert owner.welcome["owner"] == owner.welcome["you"]
    guest = await JsonClient.connect(b.url("r"))
    assert guest.welcome["owner"] == owner.welcome["you"], "one owner on every node"
    await owner.send(type="topic", text="cluster topic")
    got = await guest.expect("topic")
    assert (got["topic"], got["by"]) == ("cluster topic", owner.welcome["you"])
    await owner.send(type="kick", name=guest.welcome["you"])
    kicked = await guest.expect("kick")
    assert kicked["name"] == guest.welcome["you"]
    code, _ = await closed(guest.ws)
    assert code == 4001
    await owner.expect("leave", name=guest.welcome["you"])
    other = await JsonClient.connect(b.url("r"))
    await owner.send(type="close")
    code, reason = await closed(other.ws)
    assert code == 4002 and owner.welcome["you"] in reason
    fresh = await JsonClient.connect(b.url("r"))
    assert fresh.welcome["seq"] == 0 and fresh.welcome["topic"] is None


async def test_a_room_new_on_a_node_learns_everyone_who_joined_elsewhere_meanwhile(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    for attempt in range(3):
        room = f"race-{attempt}"
        # The room is new on node B while these join on A: B subscribes to the room as they do.
        joining = [asyncio.create_task(JsonClient.connect(a.url(room))) for _ in range(15)]
        watcher = await JsonClient.connect(b.url(room))
        others = await asyncio.gather(*joining)
        names = {client.welcome["you"] for client in others}
        known = set(watcher.welcome["members"])
        while not names <= known:
            event = await watcher.expect("join")
            known.add(event["name"])
        for client in [watcher, *others]:
            await client.close()


async def test_announcements_and_read_markers_cross_nodes(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    key = "cluster-key"
    a, b = nodes(relay_factory, redis_server, 2, "--key", key)
    auth = f"key={key}"
    writer = await JsonClient.connect(a.url("r", auth))
    reader = await JsonClient.connect(b.url("r", auth))
    elsewhere = await JsonClient.connect(b.url("other", auth))
    await writer.send(type="say", text="read me")
    said = await reader.expect("message", text="read me")
    await reader.send(type="read", seq=said["seq"])
    # The author, on another node, learns it was read.
    seen = await writer.expect("read")
    assert (seen["name"], seen["seq"]) == (reader.welcome["you"], said["seq"])
    async with httpx.AsyncClient() as http:
        posted = await http.post(
            f"{a.http}/announce",
            json={"text": "maintenance at noon"},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert posted.status_code == 201 and posted.json()["rooms"] == 2, posted.text
    for client in (writer, reader, elsewhere):
        notice = await client.expect("announce")
        assert notice["text"] == "maintenance at noon"


async def test_two_nodes_never_give_one_name_to_two_people(
    redis_server: RedisProcess, relay_factory: Callable[..., RelayProcess]
) -> None:
    a, b = nodes(relay_factory, redis_server, 2)
    left = await JsonClient.connect(a.url("r"))
    right = await JsonClient.connect(b.url("r"))
    for attempt in range(20):
        name = f"wanted{attempt}"
        await asyncio.gather(
            left.ws.send(f'{{"type":"nick","name":"{name}","cid":"n{attempt}"}}'),
            right.ws.send(f'{{"type":"nick","name":"{name}","cid":"n{attempt}"}}'),
        )
        outcomes = []
        for client in (left, right):
            while True:
                event = await client.next()
                if event.get("cid") == f"n{attempt}" or (
                    event["type"] == "nick"
                    and event["new"] == name
                    and event["old"] == client.welcome["you"]
                ):
                    outcomes.append(event["type"])
                    break
        assert sorted(outcomes) == ["error", "nick"], (name, outcomes)
        winner = left if outcomes[0] == "nick" else right
        # The winner gives the name back up for the next round.
        await winner.send(type="nick", name=winner.welcome["you"])
        await winner.expect("nick", new=winner.welcome["you"])
