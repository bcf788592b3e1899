"""The HTTP API: health, room listing, history pages, posting as a bot, Prometheus metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from tests.relayproc import JsonClient, RelayProcess, eventually, metric


@pytest.fixture
async def http(relay: RelayProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as client:
        yield client


async def test_healthz(http: httpx.AsyncClient) -> None:
    response = await http.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_rooms_lists_member_counts(
    relay: RelayProcess, http: httpx.AsyncClient, room: str
) -> None:
    alice = await JsonClient.connect(relay.url(room))
    again = await JsonClient.connect(relay.url(room, f"token={alice.welcome['token']}"))
    bob = await JsonClient.connect(relay.url(room))

    async def entry() -> dict | None:
        listing = (await http.get("/rooms")).json()["rooms"]
        return next((e for e in listing if e["room"] == room and e["connections"] == 3), None)

    found = await eventually(entry)
    assert found["members"] == 2
    for client in (alice, again, bob):
        await client.close()


async def test_message_pages(relay: RelayProcess, http: httpx.AsyncClient, room: str) -> None:
    alice = await JsonClient.connect(relay.url(room))
    for i in range(1, 26):
        await alice.send(type="say", text=f"m{i}")
    await alice.expect("message", seq=25)
    page = (await http.get(f"/rooms/{room}/messages", params={"limit": 10})).json()
    assert page["room"] == room and page["seq"] == 25 and page["epoch"] == alice.welcome["epoch"]
    assert [m["seq"] for m in page["messages"]] == list(range(16, 26))
    older = (await http.get(f"/rooms/{room}/messages", params={"before": 16, "limit": 10})).json()
    assert [m["seq"] for m in older["messages"]] == list(range(6, 16))
    first = (await http.get(f"/rooms/{room}/messages", params={"before": 6, "limit": 10})).json()
    assert [m["text"] for m in first["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    everything = (await http.get(f"/rooms/{room}/messages", params={"limit": 1000})).json()
    assert len(everything["messages"]) == 25
    await alice.close()


async def test_message_pages_capped_at_200(http: httpx.AsyncClient, room: str) -> None:
    for i in range(205):
        response = await http.post(f"/rooms/{room}/messages", json={"from": "bot", "text": f"{i}"})
        assert response.status_code == 201
    page = (await http.get(f"/rooms/{room}/messages", params={"limit": 500})).json()
    assert [m["seq"] for m in page["messages"]] == list(range(6, 206))


@pytest.mark.parametrize("query", ["before=x", "limit=-3", "limit=1e3"])
async def test_message_pages_bad_query(http: httpx.AsyncClient, room: str, query: str) -> None:
    response = await http.get(f"/rooms/{room}/messages?{query}")
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"


async def test_post_fans_out_to_json_and_plain(
    relay: RelayProcess, http: httpx.AsyncClient, room: str
) -> None:
    alice = await JsonClient.connect(relay.url(room))
    async with websockets.connect(relay.url(room)) as plain:
        await asyncio.wait_for(plain.recv(), 5)  # own join
        response = await http.post(
            f"/rooms/{room}/messages", json={"from": "deploy-bot", "text": "v1.2 is live"}
        )
        assert response.status_code == 201
        posted = response.json()
        assert posted["from"] == "deploy-bot" and posted["text"] == "v1.2 is live"
        assert posted["via"] == "http" and posted["seq"] == 1 and posted["id"]
        event = await alice.expect("message")
        assert event == posted
        assert await asyncio.wait_for(plain.recv(), 5) == "deploy-bot (via http) :: v1.2 is live"
    await alice.close()


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"from": "bad name", "text": "x"}, 400, "bad_name"),
        ({"from": "", "text": "x"}, 400, "bad_name"),
        ({"from": "b" * 33, "text": "x"}, 400, "bad_name"),
        ({"from": "bot", "text": "x" * 4097}, 413, "too_large"),
        ({"from": "bot", "text": ""}, 400, "empty"),
        ({"from": "bot"}, 400, "bad_request"),
        ({"from": 1, "text": "x"}, 400, "bad_request"),
        (["not", "an", "object"], 400, "bad_json"),
    ],
)
async def test_post_refused(
    http: httpx.AsyncClient, room: str, body: object, status: int, code: str
) -> None:
    response = await http.post(f"/rooms/{room}/messages", json=body)
    assert response.status_code == status
    assert response.json()["error"] == code
    page = (await http.get(f"/rooms/{room}/messages")).json()
    assert page["messages"] == []


async def test_post_invalid_json_body(http: httpx.AsyncClient, room: str) -> None:
    response = await http.post(
        f"/rooms/{room}/messages", content=b"{oops", headers={"Content-Type": "application/json"}
    )
    assert (response.status_code, response.json()["error"]) == (400, "bad_json")


async def test_post_as_connected_user_is_409(
    relay: RelayProcess, http: httpx.AsyncClient, room: str
) -> None:
    alice = await JsonClient.connect(relay.url(room))
    name = alice.welcome["you"]
    response = await http.post(f"/rooms/{room}/messages", json={"from": name.upper(), "text": "x"})
    assert (response.status_code, response.json()["error"]) == (409, "name_taken")
    await alice.close()


@pytest.mark.parametrize("bad_room", ["two%20words", "a%3Bb", "x" * 65])
async def test_bad_room_is_400(http: httpx.AsyncClient, bad_room: str) -> None:
    posted = await http.post(f"/rooms/{bad_room}/messages", json={"from": "bot", "text": "x"})
    assert (posted.status_code, posted.json()["error"]) == (400, "bad_room")
    got = await http.get(f"/rooms/{bad_room}/messages")
    assert (got.status_code, got.json()["error"]) == (400, "bad_room")


async def test_metrics_prometheus_text(
    relay: RelayProcess, http: httpx.AsyncClient, room: str
) -> None:
    before = (await http.get("/metrics")).text
    alice = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await alice.send(type="say", text="counted")
    await alice.send(type="teleport")
    await bob.expect("message", text="counted")
    await alice.expect("error", code="unknown_type")
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    for name in (
        "chat_connections_open",
        "chat_rooms",
        "chat_connections_total",
        "chat_messages_in_total",
        "chat_messages_out_total",
        "chat_slow_consumers_total",
    ):
        assert f"# TYPE {name} " in body, name
    assert metric(body, "chat_connections_open") >= 2
    assert metric(body, "chat_rooms") >= 1
    grew = [
        ("chat_connections_total", 2),
        ("chat_messages_in_total", 1),
        ("chat_messages_out_total", 2),
        ('chat_errors_total{code="unknown_type"}', 1),
    ]
    for name, at_least in grew:
        assert metric(body, name) - metric(before, name) >= at_least, name
    for line in body.splitlines():
        assert line.startswith("#") or len(line.rsplit(" ", 1)) == 2, line
    await alice.close()
    await bob.close()


async def test_epoch_reported_before_a_room_exists_is_kept(relay_factory) -> None:
    relay = relay_factory("--db", ":memory:")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        page = (await http.get("/rooms/never-used/messages")).json()
        assert (page["seq"], page["messages"]) == (0, [])
        client = await JsonClient.connect(relay.url("never-used"))
        assert client.welcome["epoch"] == page["epoch"]
        await client.send(type="say", text="first")
        await client.expect("message", seq=1)
        await client.close()
