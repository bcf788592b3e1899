"""SQLiteStore on a temporary file: the Store contract, reopening, retention, failed writes."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from relay.store import MemoryStore, Store
from relay.store.sqlite import CACHE_ENTRIES, SQLiteStore


def message(room: str, seq: int, text: str = "") -> dict:
    return {
        "type": "message",
        "room": room,
        "id": f"i-{seq}",
        "seq": seq,
        "text": text or f"m{seq}",
    }


def fill(store: Store, room: str, count: int) -> None:
    start = store.room(room)[1]
    for seq in range(start + 1, start + count + 1):
        store.append(room, message(room, seq))


def seqs(events: list[dict] | None) -> list[int] | None:
    return None if events is None else [event["seq"] for event in events]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "chat.db"


@pytest.fixture
def stores(db: Path) -> Iterator[list[SQLiteStore]]:
    """Stores opened by a test, closed at its end (each must be closed before the next opens)."""
    opened: list[SQLiteStore] = []
    yield opened
    for store in opened:
        if store._writer.is_alive():
            store.close()


def flushed(store: SQLiteStore) -> bool:
    """flush() from a thread, so a dead writer fails the test instead of hanging it."""
    thread = threading.Thread(target=store.flush, daemon=True)
    thread.start()
    thread.join(5)
    return not thread.is_alive()


def clean_mark(db: Path) -> str:
    with closing(sqlite3.connect(db)) as raw:
        return raw.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()[0]


def open_store(stores: list[SQLiteStore], db: Path, **kwargs: object) -> SQLiteStore:
    store = SQLiteStore(db, **kwargs)  # type: ignore[arg-type]
    stores.append(store)
    return store


def test_behaves_like_memory_store_within_the_tail(db: Path, stores: list) -> None:
    durable, memory = open_store(stores, db, history_limit=10), MemoryStore(10)
    for store in (durable, memory):
        fill(store, "r", 25)
    durable.flush()
    for seq in (0, 14, 15, 20, 24, 25, 26):
        assert seqs(durable.after("r", seq)) == seqs(memory.after("r", seq)), seq
    for before, limit in ((None, 5), (18, 2), (16, 0), (30, 4)):
        assert seqs(durable.before("r", before, limit)) == seqs(memory.before("r", before, limit))
    assert durable.room("r")[1] == 25


def test_serves_history_limit_even_before_commit(db: Path, stores: list) -> None:
    store = open_store(stores, db, history_limit=5)
    fill(store, "r", 30)
    assert seqs(store.before("r", None, 50)) == list(range(26, 31))
    assert seqs(store.before("r", 28, 50)) == [26, 27]
    assert store.after("r", 24) is None
    assert seqs(store.after("r", 25)) == list(range(26, 31))


def test_database_keeps_more_than_the_tail(db: Path, stores: list) -> None:
    open_store(stores, db, history_limit=5)
    fill(stores[0], "r", 30)
    stores[0].close()
    store = open_store(stores, db, history_limit=20)
    assert seqs(store.before("r", None, 50)) == list(range(11, 31))
    assert seqs(store.before("r", 15, 3)) == [12, 13, 14]


def test_reopen_keeps_epoch_seq_messages_identities(db: Path, stores: list) -> None:
    store = open_store(stores, db, history_limit=10)
    fill(store, "r", 12)
    epoch = store.room("r")[0]
    empty_epoch = store.room("quiet")[0]
    store.set_topic("quiet", "shh")
    store.set_identity_name("subj", "alice")
    store.set_identity_name("subj", "alice2")
    store.set_owner("r", "subj")
    store.set_topic("r", "hello")
    store.set_read_marker("r", "subj", 7)
    store.close()

    store = open_store(stores, db, history_limit=10)
    assert store.room("r") == (epoch, 12)
    assert store.room("quiet") == (empty_epoch, 0)
    assert seqs(store.after("r", 9)) == [10, 11, 12]
    assert seqs(store.before("r", None, 20)) == list(range(3, 13))
    assert store.identity_name("subj") == "alice2"
    assert store.identity_name("nobody") is None
    assert (store.owner("r"), store.topic("r"), store.read_marker("r", "subj")) == (
        "subj",
        "hello",
        7,
    )
    fill(store, "r", 1)
    assert store.room("r") == (epoch, 13)


def test_rooms_and_names_only_looked_up_are_not_kept(db: Path, stores: list) -> None:
    store = open_store(stores, db)
    for i in range(50):
        assert store.room(f"room{i}")[1] == 0
        assert store.before(f"room{i}", None, 10) == []
        assert (store.owner(f"room{i}"), store.read_marker(f"room{i}", "s")) == (None, 0)
        assert store.subject_of(f"nobody{i}") is None
        assert store.dm_consent("me", f"nobody{i}") is None
    assert (len(store._rooms), len(store._subjects), len(store._consent)) == (0, 0, 0)
    store.close()
    with closing(sqlite3.connect(db)) as raw:
        assert raw.execute("SELECT count(*) FROM rooms").fetchone()[0] == 0


def test_identity_caches_are_bounded_and_keep_uncommitted_entries(db: Path, stores: list) -> None:
    store = open_store(stores, db)
    count = CACHE_ENTRIES + 500
    for i in range(count):
        store.set_identity_name(f"s{i}", f"n{i}")
        store.set_dm_consent(f"s{i}", "me", "pending", f"s{i}")
    # Evicting these before the writer commits them would answer from a database without them.
    assert all(store.subject_of(f"N{i}") == f"s{i}" for i in range(count))
    assert all(store.identity_name(f"s{i}") == f"n{i}" for i in range(count))
    assert all(store.dm_consent("me", f"s{i}") == ("pending", f"s{i}") for i in range(count))
    store.flush()
    store.set_identity_name("last", "last")
    store.set_dm_consent("last", "me", "accepted", "me")
    assert len(store._names) == len(store._subjects) == len(store._consent) == CACHE_ENTRIES
    assert store.identity_name("s0") == "n0" and store.subject_of("n1") == "s1"
    assert store.dm_consent("s2", "me") == ("pending", "s2")


def test_failed_writes_keep_the_writer_and_the_uncommitted_tail(
    db: Path, stores: list, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(stores, db, history_limit=2)
    fill(store, "r", 2)
    assert flushed(store)
    with closing(sqlite3.connect(db)) as raw:
        raw.execute("DROP TABLE messages")
    for _ in range(2):
        fill(store, "r", 2)
        assert flushed(store), "flush() returns after a failed write"
    assert store._writer.is_alive()
    assert [m["seq"] for m in store._rooms["r"].messages] == [3, 4, 5, 6], "never committed"
    assert seqs(store.before("r", None, 10)) == [5, 6]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, "one log entry per outage, not per batch"
    store.close()
    assert clean_mark(db) == "0"


def test_unencodable_message_does_not_stop_the_writer(db: Path, stores: list) -> None:
    store = open_store(stores, db)
    store.append("r", message("r", 1) | {"bad": {1, 2}})
    assert flushed(store)
    assert store._writer.is_alive()
    fill(store, "r", 2)
    store.close()
    assert clean_mark(db) == "0"
    store = open_store(stores, db)
    assert seqs(store.before("r", None, 10)) == [2, 3]


def test_unclean_close_starts_a_new_epoch(db: Path, stores: list) -> None:
    store = open_store(stores, db)
    fill(store, "r", 4)
    epoch = store.room("r")[0]
    store.flush()
    # What a crash leaves behind: committed rows, but no clean mark.
    again = SQLiteStore(db)
    stores.append(again)
    new_epoch, seq = again.room("r")
    assert (seq, seqs(again.after("r", 2))) == (4, [3, 4])
    assert new_epoch != epoch


def test_delete_room_starts_anew(db: Path, stores: list) -> None:
    store = open_store(stores, db)
    fill(store, "r", 5)
    store.set_owner("r", "s")
    epoch = store.room("r")[0]
    store.delete_room("r")
    assert store.room("r")[1] == 0 and store.room("r")[0] != epoch
    assert store.owner("r") is None and store.before("r", None, 10) == []
    fill(store, "r", 2)
    store.close()
    store = open_store(stores, db)
    assert seqs(store.before("r", None, 10)) == [1, 2]


def test_retain_messages_caps_each_room(db: Path, stores: list) -> None:
    store = open_store(stores, db, retain_messages=10, retention_seconds=0)
    fill(store, "a", 25)
    fill(store, "b", 4)
    store.flush()
    assert seqs(store.before("a", None, 100)) == list(range(16, 26))
    assert seqs(store.before("b", None, 100)) == [1, 2, 3, 4]
    with sqlite3.connect(db) as raw:
        counts = dict(raw.execute("SELECT room, count(*) FROM messages GROUP BY room"))
    assert counts == {"a": 10, "b": 4}


def test_retain_days_drops_old_messages_on_start(db: Path, stores: list) -> None:
    now = [1_000_000.0]
    store = open_store(stores, db, clock=lambda: now[0])
    fill(store, "r", 5)
    now[0] += 3 * 86400
    fill(store, "r", 3)
    store.close()
    store = open_store(stores, db, retain_days=2, clock=lambda: now[0])
    assert seqs(store.before("r", None, 100)) == [6, 7, 8]
    assert store.room("r")[1] == 8


def test_retain_days_trims_a_running_store(db: Path, stores: list) -> None:
    now = [1_000_000.0]
    store = open_store(
        stores, db, history_limit=100, retain_days=1, retention_seconds=0, clock=lambda: now[0]
    )
    fill(store, "r", 5)
    now[0] += 2 * 86400
    fill(store, "r", 2)
    store.flush()
    assert seqs(store.before("r", None, 100)) == [6, 7]
    assert store.after("r", 3) is None
    assert seqs(store.after("r", 5)) == [6, 7]


def test_newer_schema_is_refused(db: Path, stores: list) -> None:
    open_store(stores, db).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteStore(db)
