"""The SQLite store when a write fails: one bad row, a full disk, a database that is gone."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import httpx

from relay.sqlite_store import SQLiteStore
from tests.relayproc import RelayProcess


def message(room: str, seq: int, text: str = "") -> dict:
    text = text or f"m{seq}"
    return {"type": "message", "room": room, "id": f"i-{seq}", "seq": seq, "text": text}


def stored(db: Path, room: str) -> list[str]:
    with closing(sqlite3.connect(db)) as raw:
        rows = raw.execute("SELECT event FROM messages WHERE room = ? ORDER BY seq", (room,))
        return [row[0] for row in rows]


@contextmanager
def writer_held(db: Path) -> Iterator[None]:
    """Hold the database's write lock, so what is submitted meanwhile forms one batch.

    The writer blocks on its next write (busy timeout) and takes everything queued behind it
    as the batch after that, once the lock is released.
    """
    with closing(sqlite3.connect(db, isolation_level=None)) as raw:
        raw.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            raw.execute("COMMIT")


def test_one_bad_row_does_not_roll_back_the_batch(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    store = SQLiteStore(db)
    store.append("warmup", message("warmup", 1))
    store.flush()
    with writer_held(db):
        store.append("warmup", message("warmup", 2))
        store.append("a", message("a", 1, "alice 1"))
        store.append("b", message("b", 1, "bob 1"))
        # A lone surrogate: SQLite cannot store it as UTF-8, so this one row fails.
        store.append("a", message("a", 2, "bad \ud800 row"))
        store.append("b", message("b", 2, "bob 2"))
        store.set_identity_name("carol-subject", "carol")
        store.append("a", message("a", 3, "alice 3"))
    store.flush()
    assert [row.count("alice") for row in stored(db, "a")] == [1, 1]
    assert len(stored(db, "b")) == 2
    assert store.subject_of("carol") == "carol-subject"
    store.close()
    reopened = SQLiteStore(db)
    assert [m["seq"] for m in reopened.before("a", None, 10)] == [1, 3]
    assert [m["text"] for m in reopened.before("b", None, 10)] == ["bob 1", "bob 2"]
    assert reopened.subject_of("carol") == "carol-subject"
    reopened.close()


async def test_relay_keeps_honest_posts_batched_with_a_bad_one(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = tmp_path / "chat.db"
    relay = relay_factory("--rate", "0", "--db", str(db))
    async with httpx.AsyncClient(base_url=relay.http) as http:
        first = await http.post("/rooms/r/messages", json={"from": "bot", "text": "first"})
        assert first.status_code == 201
        with writer_held(db):
            await http.post("/rooms/r/messages", json={"from": "bot", "text": "held up"})
            await http.post("/rooms/r/messages", json={"from": "bot", "text": "honest 1"})
            bad = '{"from": "mallory", "text": "x\\ud800y"}'
            # Refused at the door, or (before that check) a 500: either way, stored nowhere.
            async with httpx.AsyncClient(base_url=relay.http) as once:
                with contextlib.suppress(httpx.HTTPError):
                    await once.post("/rooms/r/messages", content=bad)
            await http.post("/rooms/r/messages", json={"from": "bot", "text": "honest 2"})
    assert relay.stop() == 0
    relay = relay_factory("--db", str(db))
    async with httpx.AsyncClient(base_url=relay.http) as http:
        page = (await http.get("/rooms/r/messages")).json()["messages"]
    texts = [m["text"] for m in page]
    assert texts[:2] == ["first", "held up"]
    assert "honest 1" in texts and "honest 2" in texts
