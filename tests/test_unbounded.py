"""Stores stay bounded: rooms used once and left, many rooms' tails, identities never seen again."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from relay.core import Hub, Limits
from relay.store import MemoryStore, Store
from relay.store.sqlite import SQLiteStore
from relay.tokens import TokenSigner
from tests.relayproc import JsonClient, RelayProcess
from tests.test_core import Recorder

ROOMS = 2000


def message(room: str, seq: int) -> dict:
    return {"type": "message", "room": room, "id": f"{room}-{seq}", "seq": seq, "text": "hi"}


def rows(db: Path, table: str) -> int:
    with closing(sqlite3.connect(db)) as raw:
        count: int = raw.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count


def hub_on(store: Store) -> Hub:
    return Hub(store, TokenSigner(b"test-secret"), Limits(rate=0.0))


def test_rooms_joined_and_left_leave_no_rows(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    store = SQLiteStore(db)
    hub = hub_on(store)
    for i in range(ROOMS):
        client = Recorder()
        hub.join(client, f"room-{i}")
        if i % 100 == 0:
            hub.receive(client, '{"type": "say", "text": "worth keeping"}')
        hub.leave(client)
    store.flush()
    assert rows(db, "rooms") == ROOMS // 100
    assert len(store._rooms) <= ROOMS // 100 + 1
    # A released room is new again: the next joiner owns it.
    again = Recorder()
    hub.join(again, "room-1")
    assert again.of("welcome")[0]["owner"] == again.of("welcome")[0]["you"]
    store.close()


def test_memory_store_releases_empty_rooms_and_bounds_all_tails() -> None:
    store = MemoryStore(100, rooms=500, budget=1000)
    hub = hub_on(store)
    for i in range(ROOMS):
        client = Recorder()
        hub.join(client, f"room-{i}")
        hub.leave(client)
    assert len(store._logs) == 0
    for i in range(ROOMS):
        store.append(f"busy-{i}", message(f"busy-{i}", 1))
    assert len(store._logs) <= 500 and store._total <= 1000
    for seq in range(1, 301):
        for room in ("a", "b", "c", "d", "e"):
            store.append(room, message(room, seq))
    assert store._total <= 1000
    assert [m["seq"] for m in store.before("e", None, 100)] == list(range(201, 301))


def test_sqlite_tails_have_one_budget_across_rooms(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    store = SQLiteStore(db, history_limit=50, tail_budget=1000)
    for i in range(ROOMS):
        store.append(f"room-{i}", message(f"room-{i}", 1))
        if i % 200 == 0:
            store.flush()
    store.flush()
    store.room("one-more-look")
    store.append("last", message("last", 1))
    assert store._tail_total <= 1000 + 16
    assert len(store._rooms) <= 1000 + 16
    assert store._tail_total == sum(len(state.messages) for state in store._rooms.values())
    # Forgotten from memory, not from the database: the next look loads it again.
    assert [m["id"] for m in store.before("room-0", None, 10)] == ["room-0-1"]
    assert store.room("room-7")[1] == 1
    store.close()
    assert rows(db, "messages") == ROOMS + 1


async def test_relay_forgets_rooms_nobody_wrote_in(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    relay = relay_factory("--rate", "0", "--db", str(db))
    for i in range(200):
        client = await JsonClient.connect(relay.url(f"drive-by-{i}"))
        await client.close()
    kept = await JsonClient.connect(relay.url("kept"))
    await kept.send(type="say", text="stay")
    await kept.expect("message", text="stay")
    await kept.close()
    assert relay.stop() == 0
    assert rows(db, "rooms") == 1


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


MONTH = 31 * 86400.0


def test_sqlite_forgets_anonymous_identities_never_seen_again(tmp_path: Path) -> None:
    db, clock = tmp_path / "chat.db", Clock()
    store = SQLiteStore(db, clock=clock)
    for i in range(ROOMS):
        store.set_identity_name(f"s{i}", f"anon-{i}")
    store.set_identity_name("picked", "picked-a-name", chosen=True)
    store.set_identity_name("inbox", "has-mail")
    store.hold_dm("inbox", "s1", {"type": "dm", "id": "d1", "text": "hi"})
    store.set_identity_name("owner", "owns-a-room")
    store.set_owner("their-room", "owner")
    store.set_dm_consent("s2", "picked", "pending", "s2")
    clock.now += MONTH
    store.set_identity_name("s3", "anon-3")
    store.close()
    assert rows(db, "identities") == ROOMS + 3

    store = SQLiteStore(db, clock=clock)
    kept = {"s3", "picked", "inbox", "owner"}
    with closing(sqlite3.connect(db)) as raw:
        left = {subject for (subject,) in raw.execute("SELECT subject FROM identities")}
    assert left == kept
    assert rows(db, "names") == len(kept) and rows(db, "consent") == 0
    assert store.subject_of("anon-3") == "s3" and store.subject_of("anon-4") is None
    store.close()


def test_memory_store_forgets_anonymous_identities_never_seen_again() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    for i in range(ROOMS):
        store.set_identity_name(f"s{i}", f"anon-{i}")
    store.set_identity_name("picked", "picked-a-name", chosen=True)
    store.set_identity_name("inbox", "has-mail")
    store.hold_dm("inbox", "s1", {"type": "dm", "id": "d1", "text": "hi"})
    store.set_dm_consent("s2", "picked", "pending", "s2")
    clock.now += MONTH
    store.set_identity_name("s3", "anon-3")
    assert set(store._names) == {"s3", "picked", "inbox"}
    assert store.subject_of("anon-4") is None and store.subject_of("anon-3") == "s3"
    assert store.dm_consent("s2", "picked") is None


def test_hub_marks_identities_seen_at_logout_and_nick_as_chosen() -> None:
    clock = Clock()
    store = MemoryStore(clock=clock)
    hub = hub_on(store)
    named, anon = Recorder(), Recorder()
    hub.join(named, "r")
    hub.join(anon, "r")
    hub.receive(named, '{"type": "nick", "name": "keeper"}')
    clock.now += MONTH
    hub.leave(named)
    hub.leave(anon)
    anon_name = anon.of("welcome")[0]["you"]
    clock.now += 20 * 86400.0
    store.set_identity_name("someone-new", "trigger")
    assert store.subject_of(anon_name) is not None, "away for 20 days since its logout"
    clock.now += 15 * 86400.0
    store.set_identity_name("someone-else", "trigger-2")
    assert store.subject_of("keeper") is not None
    assert store.subject_of(anon_name) is None
