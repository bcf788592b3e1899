"""The in-memory store: lookups create nothing, epochs stay put until a room is deleted."""

from __future__ import annotations

from relay.store import MemoryStore


def message(seq: int) -> dict:
    return {"type": "message", "room": "a", "seq": seq, "text": str(seq)}


def test_lookups_create_no_room() -> None:
    store = MemoryStore(limit=10)
    epoch, seq = store.room("ghost")
    assert seq == 0 and store.before("ghost", None, 5) == [] and store.owner("ghost") is None
    assert store.after("ghost", 0) == [] and store.read_marker("ghost", "someone") == 0
    store.append("real", message(1))
    assert store.room("real") == (epoch, 1)
    assert store.room("ghost")[0] != epoch
    assert store.room("ghost")[1] == 0


def test_epoch_changes_only_when_the_room_is_deleted() -> None:
    store = MemoryStore(limit=3)
    epoch, _ = store.room("a")
    for seq in range(1, 6):
        store.append("a", message(seq))
    assert store.room("a") == (epoch, 5)
    assert [m["seq"] for m in store.after("a", 2) or []] == [3, 4, 5]
    assert store.after("a", 1) is None
    store.delete_room("a")
    fresh, seq = store.room("a")
    assert fresh != epoch and seq == 0
