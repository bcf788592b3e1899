"""Names that are yours: no stale name→identity mapping, no look-alikes, no posing over HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from relay.names import key, name_problem
from tests.relayproc import JsonClient, RelayProcess
from tests.test_cli_plain import run_async, server


async def named(relay: RelayProcess, room: str, name: str, query: str = "") -> JsonClient:
    client = await JsonClient.connect(relay.url(room, query))
    await client.send(type="nick", name=name)
    await client.expect("nick", new=name)
    return client


async def accept_dms(a: JsonClient, b: JsonClient, a_name: str, b_name: str) -> None:
    await a.send(type="dm", to=b_name, text="hello?")
    await b.expect("dm_request", **{"from": a_name})
    await b.send(type="dm_accept", **{"from": a_name})
    await b.expect("dm", text="hello?")
    await a.expect("dm_accepted", by=b_name)


async def test_nick_cannot_take_an_offline_identitys_name(relay: RelayProcess, room: str) -> None:
    bob = await named(relay, room, f"bob-{room}")
    watcher = await JsonClient.connect(relay.url(room))
    await bob.close()
    await watcher.expect("leave", name=f"bob-{room}")
    mallory = await JsonClient.connect(relay.url(room))
    for taken in (f"bob-{room}", f"BOB-{room}", f"b0b-{room}", f"bob_{room}"):
        await mallory.send(type="nick", name=taken)
        error = await mallory.expect("error")
        assert (error["code"], error["request"]) == ("name_taken", "nick"), taken
    await mallory.send(type="dm", to=f"bob-{room}", text="who are you?")
    assert (await mallory.expect("dm"))["held"] is True
    await mallory.close()
    await watcher.close()


@pytest.mark.parametrize("db", ["", ":memory:"], ids=["sqlite", "memory"])
async def test_a_taken_name_is_one_identitys_only(relay_factory, db: str) -> None:
    """The issue's sequence, with no grace period so that mallory may take `bob` while bob is
    away: bob comes back under a new name (not `bob` while `bob` means mallory), DMs to bob's
    new name reach him, and DMs to `bob` are a stranger's request to mallory."""
    args = ["--db", db] if db else []
    relay = relay_factory("--rate", "0", *args, env={"CHAT_RELAY_NAME_GRACE": "0"})
    dave = await named(relay, "lobby", "dave")
    bob = await named(relay, "lobby", "bob")
    await accept_dms(dave, bob, "dave", "bob")
    bob_token = bob.welcome["token"]
    await bob.close()
    await dave.expect("leave", name="bob")
    mallory = await named(relay, "lobby", "bob")
    mallory_token = mallory.welcome["token"]
    await mallory.close()
    await dave.expect("leave", name="bob")
    back = await JsonClient.connect(relay.url("lobby", f"token={bob_token}"))
    bob_now = back.welcome["you"]
    assert bob_now != "bob"
    await dave.expect("join", name=bob_now)
    await dave.send(type="dm", to=bob_now, text="still you?")
    echo = await dave.expect("dm", text="still you?")
    assert "held" not in echo and "queued" not in echo
    await back.expect("dm", text="still you?")
    await dave.send(type="dm", to="bob", text="for bob")
    assert (await dave.expect("dm", text="for bob"))["held"] is True
    again = await JsonClient.connect(relay.url("lobby", f"token={mallory_token}"))
    assert again.welcome["you"] == "bob"
    await again.expect("dm_request", **{"from": "dave"})
    await back.send(type="who")
    await back.expect("members")
    assert [e for e in back.seen if e["type"] == "dm_request"] == []
    for client in (dave, back, again):
        await client.close()


@pytest.mark.parametrize(
    "name",
    ["\u0430lice", "admin", "Adm1n", "SYSTEM", "--", "-x", "9lives", "*", "zoë", "a b", "a" * 33],
)
async def test_nick_refuses_names_outside_the_rule(relay: RelayProcess, room: str, name) -> None:
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="nick", name=name)
    error = await client.expect("error")
    assert (error["code"], error["request"]) == ("bad_name", "nick")
    await client.close()


async def test_look_alikes_of_a_connected_name_are_taken(relay: RelayProcess, room: str) -> None:
    owner = await named(relay, room, f"Lily-{room}.x")
    other = await JsonClient.connect(relay.url(room))
    for look_alike in (f"lily-{room}.x", f"L1ly-{room}_x", f"lIly-{room}-x"):
        await other.send(type="nick", name=look_alike)
        assert (await other.expect("error"))["code"] == "name_taken", look_alike
    await owner.send(type="nick", name=f"lily-{room}.x")  # your own name, another case
    await owner.expect("nick", new=f"lily-{room}.x")
    await owner.close()
    await other.close()


@pytest.mark.parametrize(
    ("sender", "status", "code"),
    [
        ("\u0430lice", 400, "bad_name"),  # Cyrillic a
        ("admin", 400, "bad_name"),
        ("--", 400, "bad_name"),
        ("relay", 400, "bad_name"),
    ],
)
async def test_http_post_refuses_names_outside_the_rule(relay, room, sender, status, code):
    async with httpx.AsyncClient(base_url=relay.http) as http:
        response = await http.post(
            f"/rooms/{room}/messages", json={"from": sender, "text": "trust me"}
        )
    assert (response.status_code, response.json()["error"]) == (status, code)


async def test_http_post_may_not_use_any_identitys_name(relay: RelayProcess, room: str) -> None:
    alice = await named(relay, room, f"alice-{room}")
    await alice.close()
    async with httpx.AsyncClient(base_url=relay.http) as http:
        for sender in (f"alice-{room}", f"a1ice-{room}", f"ALICE-{room}"):
            response = await http.post(
                f"/rooms/{room}/messages", json={"from": sender, "text": "it is me, honest"}
            )
            assert (response.status_code, response.json()["error"]) == (409, "name_taken")
        response = await http.post(
            f"/rooms/{room}/messages", json={"from": f"deploy-{room}", "text": "v2 is out"}
        )
        assert response.status_code == 201
        assert response.json()["via"] == "http"


async def test_http_posts_are_marked_in_plain_and_plain_clients(relay, room, tmp_path) -> None:
    watcher = await JsonClient.connect(relay.url(room))
    task = asyncio.create_task(
        run_async(["--plain", "connect", room, "--count", "1", *server(relay)], env_dir=tmp_path)
    )
    while (await watcher.expect("join", timeout=20))["name"] == watcher.welcome["you"]:
        pass
    async with websockets.connect(relay.url(room)) as plain:
        assert (await plain.recv()).endswith("joined the chat")
        async with httpx.AsyncClient(base_url=relay.http) as http:
            body = {"from": f"ci-{room}", "text": "build green"}
            assert (await http.post(f"/rooms/{room}/messages", json=body)).status_code == 201
        assert await plain.recv() == f"ci-{room} (via http) :: build green"
    result = await task
    assert result.returncode == 0, result.stderr
    assert f"ci-{room} (via http) :: build green" in result.stdout.splitlines()
    await watcher.close()


def test_name_rule_units() -> None:
    assert key("Rn0_1.i") == key("mo-l-l")
    assert name_problem("rnoderator") == "rnoderator is reserved"
    assert name_problem("brave-otter") is None


async def test_tui_marks_http_posts(relay: RelayProcess, room: str) -> None:
    from tests.test_tui_app import SIZE, connected, has_line, make_app, until

    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        async with httpx.AsyncClient(base_url=relay.http) as http:
            body = {"from": f"hook-{room}", "text": "deployed"}
            assert (await http.post(f"/rooms/{room}/messages", json=body)).status_code == 201
        await until(pilot, lambda: has_line(app, room, f"hook-{room} (via http) deployed"))


def test_random_names_avoid_every_known_identity() -> None:
    """The random name a newcomer would get is held by an offline identity: it gets another.
    coolname draws from the `random` module, so seeding it makes the first draw known."""
    import random

    from coolname import generate_slug

    from relay.core import Hub
    from relay.store import MemoryStore
    from relay.tokens import TokenSigner
    from tests.test_core import Recorder

    random.seed(2026)
    first = generate_slug(2)
    store = MemoryStore()
    store.set_identity_name("offline-subject", first)
    hub = Hub(store, TokenSigner(b"secret"))
    newcomer = Recorder()
    random.seed(2026)
    hub.join(newcomer, "lobby")
    assert newcomer.user is not None
    assert newcomer.user.name != first
    assert store.subject_of(first) == "offline-subject"


def test_sqlite_names_from_before_look_alike_keys_are_rekeyed(tmp_path) -> None:
    """A database written when names were keyed by casefold answers by look-alike key."""
    import sqlite3

    from relay.store.sqlite import MIGRATIONS, SQLiteStore

    path = tmp_path / "chat.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(f"BEGIN; {MIGRATIONS[0]} PRAGMA user_version = 1; COMMIT;")
    db.execute("INSERT INTO identities VALUES ('s-alice', 'Alice')")
    db.execute("INSERT INTO names VALUES ('alice', 's-alice')")
    db.close()
    store = SQLiteStore(path)
    try:
        assert store.subject_of("ALICE") == "s-alice"
        assert store.subject_of("a1ice") == "s-alice"
        assert store.identity_name("s-alice") == "Alice"
    finally:
        store.close()
