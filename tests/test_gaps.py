"""History pages and resume when the seqs a store holds have gaps.

A gap appears when the database could not keep one message (it was dropped as a bad row) or a
crash lost the last few: after a restart the tail loaded from the database skips those seqs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from relay.store import MemoryStore, Store
from relay.store.sqlite import SQLiteStore
from tests.relayproc import JsonClient, RelayProcess

KEPT = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16]


def message(room: str, seq: int) -> dict:
    return {"type": "message", "room": room, "id": f"i-{seq}", "seq": seq, "text": f"m{seq}"}


def seqs(events: list[dict] | None) -> list[int] | None:
    return None if events is None else [event["seq"] for event in events]


@pytest.fixture(params=["memory", "sqlite", "sqlite-reopened"])
def gappy(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store holding KEPT in room "r": in memory, in SQLite, and SQLite after a restart."""
    if request.param == "memory":
        store: Store = MemoryStore(100)
    else:
        store = SQLiteStore(tmp_path / "chat.db", history_limit=100)
    for seq in KEPT:
        store.append("r", message("r", seq))
    if request.param == "sqlite-reopened":
        store.close()
        store = SQLiteStore(tmp_path / "chat.db", history_limit=100)
    yield store
    store.close()


def test_pages_and_resume_skip_the_gap(gappy: Store) -> None:
    assert gappy.room("r")[1] == 16
    assert seqs(gappy.before("r", None, 3)) == [14, 15, 16]
    assert seqs(gappy.before("r", 14, 3)) == [11, 12, 13]
    assert seqs(gappy.before("r", 10, 3)) == [5, 8, 9]
    assert seqs(gappy.before("r", 8, 10)) == [1, 2, 3, 4, 5]
    assert seqs(gappy.before("r", 7, 2)) == [4, 5]
    assert seqs(gappy.before("r", 1, 5)) == []
    assert seqs(gappy.before("r", 100, 2)) == [15, 16]
    assert seqs(gappy.before("r", None, 100)) == KEPT
    assert seqs(gappy.after("r", 12)) == [13, 14, 15, 16]
    assert seqs(gappy.after("r", 8)) == [9, 10, 11, 12, 13, 14, 15, 16]
    assert seqs(gappy.after("r", 3)) == [4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert seqs(gappy.after("r", 0)) == KEPT
    assert gappy.after("r", 16) == []


def test_paging_back_over_a_gap_serves_each_message_once(gappy: Store) -> None:
    got: list[int] = []
    before: int | None = None
    for _ in range(len(KEPT)):
        page = gappy.before("r", before, 4)
        if not page:
            break
        got[:0] = seqs(page) or []
        before = page[0]["seq"]
    assert got == KEPT


async def test_relay_pages_history_with_a_gap_in_order(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    """The reported defect: after a restart a page came back as [14, 15, 16, 1, 2, ...]."""
    db = tmp_path / "chat.db"
    store = SQLiteStore(db)
    for seq in range(1, 17):
        store.append("r", message("r", seq))
    store.close()
    with closing(sqlite3.connect(db)) as raw, raw:
        raw.execute("DELETE FROM messages WHERE seq IN (6, 7)")
    relay = relay_factory("--db", str(db))
    async with httpx.AsyncClient(base_url=relay.http) as http:
        page = (await http.get("/rooms/r/messages", params={"limit": 5})).json()["messages"]
        assert seqs(page) == [12, 13, 14, 15, 16]
        page = (await http.get("/rooms/r/messages", params={"before": 11})).json()["messages"]
        assert seqs(page) == [1, 2, 3, 4, 5, 8, 9, 10]
    client = await JsonClient.connect(relay.url("r", "backlog=4"))
    replay = [await client.expect("message") for _ in range(4)]
    assert seqs(replay) == [13, 14, 15, 16]
    epoch = client.welcome["epoch"]
    await client.close()
    back = await JsonClient.connect(relay.url("r", f"since=9&epoch={epoch}"))
    assert back.welcome["recovered"] is True
    assert seqs([await back.expect("message") for _ in range(7)]) == list(range(10, 17))
    await back.close()
