"""The `Store` contract: what every backend must answer alike, one test per promise.

Each test runs on every backend in BACKENDS. A new backend is one line there: how to open it
(from the test's fixtures, with a `history_limit`) and whether what it keeps outlives it (then
the reopen tests run on it too). The hub relies on nothing a store does beyond what is here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from relay.names import key
from relay.store import MemoryStore, Store
from relay.store.redis import RedisStore
from relay.store.sqlite import SQLiteStore
from shared.protocol import Event

Opener = Callable[[pytest.FixtureRequest, int], Store]


@dataclass(frozen=True)
class Backend:
    open: Opener
    # What it keeps is still there when it is opened again (after close, on the same place).
    persistent: bool


BACKENDS: dict[str, Backend] = {
    "memory": Backend(lambda request, limit: MemoryStore(limit), persistent=False),
    "sqlite": Backend(
        lambda request, limit: SQLiteStore(
            request.getfixturevalue("tmp_path") / "chat.db", history_limit=limit
        ),
        persistent=True,
    ),
    # A real redis-server of its own per test (tests/redisproc.py); it outlives the store.
    "redis": Backend(
        lambda request, limit: RedisStore(
            request.getfixturevalue("redis_server").url, history_limit=limit
        ),
        persistent=True,
    ),
}


class StoreFactory:
    """Opens the backend under test; closes what it opened when the test ends."""

    def __init__(self, request: pytest.FixtureRequest, backend: Backend) -> None:
        self._request = request
        self._backend = backend
        self.opened: list[Store] = []

    def __call__(self, history_limit: int = 1000) -> Store:
        store = self._backend.open(self._request, history_limit)
        self.opened.append(store)
        return store

    def reopen(self, store: Store, history_limit: int = 1000) -> Store:
        """The same backend opened again on the same place, after `store` closed."""
        settle(store)
        store.close()
        self.opened.remove(store)
        return self(history_limit)


def settle(store: Store) -> None:
    """Wait until an asynchronous store (SQLite's writer thread) has written what it was given."""
    flush = getattr(store, "flush", None)
    if flush is not None:
        flush()


def _factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    factory = StoreFactory(request, BACKENDS[request.param])
    yield factory
    for store in factory.opened:
        store.close()


@pytest.fixture(params=sorted(BACKENDS))
def store_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    yield from _factory(request)


@pytest.fixture(params=sorted(name for name, backend in BACKENDS.items() if backend.persistent))
def persistent_factory(request: pytest.FixtureRequest) -> Iterator[StoreFactory]:
    yield from _factory(request)


@pytest.fixture
def store(store_factory: StoreFactory) -> Store:
    return store_factory()


def message(room: str, text: str = "hi") -> Event:
    return {"type": "message", "room": room, "id": f"{room}-{text}", "text": text}


def numbered(room: str, seq: int) -> Event:
    return {"type": "message", "room": room, "id": f"{room}-{seq}", "seq": seq, "text": str(seq)}


def fill(store: Store, room: str, count: int) -> None:
    for number in range(count):
        store.add(room, message(room, str(number)))


def seqs(events: list[Event] | None) -> list[int] | None:
    return None if events is None else [event["seq"] for event in events]


def dm(number: int) -> Event:
    return {"type": "dm", "id": f"dm-{number}", "text": str(number)}


# -- messages --------------------------------------------------------------------------------------


def test_add_numbers_each_room_on_its_own_from_one(store: Store) -> None:
    first = message("a", "one")
    added = store.add("a", first)
    assert added is first and added["seq"] == 1
    assert [store.add("a", message("a", t))["seq"] for t in ("two", "three")] == [2, 3]
    assert [store.add("b", message("b", t))["seq"] for t in ("one", "two")] == [1, 2]
    assert store.room("a")[1] == 3 and store.room("b")[1] == 2
    assert [m["text"] for m in store.before("a", None, 10)] == ["one", "two", "three"]
    assert store.after("a", 0) == store.before("a", None, 10)


def test_add_goes_on_from_appended_messages(store: Store) -> None:
    for seq in (1, 2, 3):
        store.append("r", numbered("r", seq))
    assert store.add("r", message("r"))["seq"] == 4
    assert seqs(store.after("r", 2)) == [3, 4]


def test_looking_at_a_room_creates_nothing_and_its_epoch_is_kept(store: Store) -> None:
    epoch, seq = store.room("ghost")
    assert seq == 0 and store.room("ghost") == (epoch, 0)
    assert store.after("ghost", 0) == [] and store.before("ghost", None, 5) == []
    assert store.owner("ghost") is None and store.topic("ghost") is None
    assert store.read_marker("ghost", "someone") == 0
    # The epoch reported before the first message is the room's epoch once it has one.
    store.add("ghost", message("ghost"))
    assert store.room("ghost") == (epoch, 1)
    assert store.room("other")[0] != epoch


def test_epoch_is_stable_until_the_room_is_deleted(store: Store) -> None:
    fill(store, "r", 3)
    store.set_owner("r", "s-owner")
    store.set_topic("r", "plans")
    store.set_read_marker("r", "s-reader", 2)
    epoch = store.room("r")[0]
    fill(store, "r", 2)
    assert store.room("r") == (epoch, 5)
    store.delete_room("r")
    fresh, seq = store.room("r")
    assert fresh != epoch and seq == 0
    assert store.before("r", None, 10) == [] and store.after("r", 0) == []
    assert (store.owner("r"), store.topic("r"), store.read_marker("r", "s-reader")) == (
        None,
        None,
        0,
    )
    assert store.add("r", message("r"))["seq"] == 1
    assert store.room("r") == (fresh, 1)


def test_after_is_none_when_it_cannot_answer_in_full(store: Store) -> None:
    fill(store, "r", 4)
    assert seqs(store.after("r", 0)) == [1, 2, 3, 4]
    assert seqs(store.after("r", 2)) == [3, 4]
    assert store.after("r", 4) == []
    # Seqs from a room's other life (a newer seq than it has) cannot be resumed from.
    assert store.after("r", 9) is None


def test_before_pages_back_oldest_first(store: Store) -> None:
    fill(store, "r", 10)
    assert seqs(store.before("r", None, 3)) == [8, 9, 10]
    assert seqs(store.before("r", 8, 3)) == [5, 6, 7]
    assert seqs(store.before("r", 3, 5)) == [1, 2]
    assert store.before("r", 1, 5) == []
    assert seqs(store.before("r", 100, 2)) == [9, 10]
    assert store.before("r", None, 0) == []
    assert seqs(store.before("r", None, 100)) == list(range(1, 11))


def test_history_limit_keeps_the_newest(store_factory: StoreFactory) -> None:
    store = store_factory(history_limit=5)
    fill(store, "r", 12)
    assert store.room("r")[1] == 12
    assert seqs(store.before("r", None, 100)) == [8, 9, 10, 11, 12]
    assert seqs(store.before("r", 9, 100)) == [8]
    assert seqs(store.after("r", 7)) == [8, 9, 10, 11, 12]
    assert store.after("r", 6) is None, "seq 7 is no longer kept"
    assert store.after("r", 0) is None


def test_pages_and_resume_skip_gaps_in_the_seqs(store: Store) -> None:
    kept = [1, 2, 3, 4, 5, 8, 9, 10, 11, 12]
    for seq in kept:
        store.append("r", numbered("r", seq))
    assert store.room("r")[1] == 12
    assert seqs(store.before("r", None, 3)) == [10, 11, 12]
    assert seqs(store.before("r", 10, 3)) == [5, 8, 9]
    assert seqs(store.before("r", 7, 2)) == [4, 5]
    assert seqs(store.after("r", 4)) == [5, 8, 9, 10, 11, 12]
    assert seqs(store.after("r", 6)) == [8, 9, 10, 11, 12]
    assert store.add("r", message("r"))["seq"] == 13


def test_release_forgets_only_a_room_with_nothing_to_keep(store: Store) -> None:
    store.set_owner("empty", "s-first")
    store.set_owner("said", "s-said")
    store.add("said", message("said"))
    store.set_owner("titled", "s-titled")
    store.set_topic("titled", "kept")
    for room in ("empty", "said", "titled", "never-used"):
        store.release(room)
    assert store.owner("empty") is None and store.room("empty")[1] == 0
    assert store.owner("said") == "s-said" and seqs(store.after("said", 0)) == [1]
    assert store.owner("titled") == "s-titled" and store.topic("titled") == "kept"
    assert store.room("never-used")[1] == 0


# -- rooms: owner, topic, read markers -------------------------------------------------------------


def test_owner_and_topic_are_per_room_and_last_set_wins(store: Store) -> None:
    store.set_owner("a", "s-1")
    store.set_topic("a", "first")
    store.set_owner("a", "s-2")
    store.set_topic("a", "second")
    store.set_topic("b", "other")
    assert (store.owner("a"), store.topic("a")) == ("s-2", "second")
    assert (store.owner("b"), store.topic("b")) == (None, "other")


def test_read_markers_are_per_room_and_identity(store: Store) -> None:
    fill(store, "a", 5)
    store.set_read_marker("a", "s-1", 3)
    store.set_read_marker("a", "s-2", 5)
    store.set_read_marker("b", "s-1", 1)
    store.set_read_marker("a", "s-1", 4)
    assert (store.read_marker("a", "s-1"), store.read_marker("a", "s-2")) == (4, 5)
    assert (store.read_marker("b", "s-1"), store.read_marker("b", "s-2")) == (1, 0)


# -- identities and names --------------------------------------------------------------------------


def test_names_map_both_ways_and_look_alikes_match(store: Store) -> None:
    assert store.identity_name("s-alice") is None and store.subject_of("alice") is None
    store.set_identity_name("s-alice", "alice", chosen=True)
    store.set_identity_name("s-corn", "corn")
    assert store.identity_name("s-alice") == "alice"
    for look_alike in ("alice", "ALICE", "a1ice", "AL1CE", "alIce"):
        assert key(look_alike) == key("alice")
        assert store.subject_of(look_alike) == "s-alice", look_alike
    assert store.subject_of("com") == "s-corn"
    assert store.subject_of("alicia") is None


def test_a_new_name_leaves_no_stale_mapping(store: Store) -> None:
    store.set_identity_name("s-1", "alice")
    store.set_identity_name("s-1", "alice")
    store.set_identity_name("s-1", "bob", chosen=True)
    assert store.identity_name("s-1") == "bob"
    assert store.subject_of("alice") is None and store.subject_of("Bob") == "s-1"
    # Another identity took the freed name; the first one moving on again must not free it.
    store.set_identity_name("s-2", "alice")
    store.set_identity_name("s-1", "carol")
    assert store.subject_of("alice") == "s-2" and store.subject_of("bob") is None
    assert store.identity_name("s-2") == "alice" and store.identity_name("s-1") == "carol"


def test_a_name_is_claimed_only_from_the_holder_the_claimer_saw(store: Store) -> None:
    assert store.claim_name("s-1", "dana", None)
    assert store.subject_of("Dana") == "s-1"
    # s-2 saw the name free, but s-1 took it since: refused, nothing changes.
    assert not store.claim_name("s-2", "dana", None)
    assert store.subject_of("dana") == "s-1" and store.identity_name("s-2") is None
    # Taking it over from the holder it saw (the hub decided s-1 was away long enough).
    assert store.claim_name("s-2", "dana", "s-1")
    assert store.subject_of("dana") == "s-2" and store.identity_name("s-2") == "dana"
    # Its own name again is always its own.
    assert store.claim_name("s-2", "Dana", None)


# -- DMs and consent -------------------------------------------------------------------------------


def test_held_dms_come_back_in_order_until_dropped_or_forgotten(store: Store) -> None:
    assert store.held_dms("s-to") == []
    store.hold_dm("s-to", "s-a", dm(1))
    store.hold_dm("s-to", "s-b", dm(2))
    store.hold_dm("s-other", "s-a", dm(3))
    store.hold_dm("s-to", "s-a", dm(4))
    store.hold_dm("s-to", "s-c", dm(5))
    held = store.held_dms("s-to")
    assert held == [("s-a", dm(1)), ("s-b", dm(2)), ("s-a", dm(4)), ("s-c", dm(5))]
    held.clear()
    assert len(store.held_dms("s-to")) == 4, "the answer is a copy"
    store.drop_dms("s-to", "s-a")
    assert store.held_dms("s-to") == [("s-b", dm(2)), ("s-c", dm(5))]
    store.forget_dms("s-to", ["dm-5", "dm-unknown"])
    assert store.held_dms("s-to") == [("s-b", dm(2))]
    store.forget_dms("s-to", ["dm-2"])
    store.drop_dms("s-nobody", "s-a")
    assert store.held_dms("s-to") == []
    assert store.held_dms("s-other") == [("s-a", dm(3))]


def test_consent_is_one_state_per_pair_either_way_round(store: Store) -> None:
    assert store.dm_consent("s-a", "s-b") is None
    store.set_dm_consent("s-a", "s-b", "pending", "s-a")
    assert store.dm_consent("s-a", "s-b") == store.dm_consent("s-b", "s-a") == ("pending", "s-a")
    store.set_dm_consent("s-b", "s-a", "accepted", "s-a")
    assert store.dm_consent("s-a", "s-b") == ("accepted", "s-a")
    store.set_dm_consent("s-c", "s-a", "declined", "s-c")
    assert store.dm_consent("s-a", "s-c") == ("declined", "s-c")
    assert store.dm_consent("s-b", "s-c") is None


# -- health ----------------------------------------------------------------------------------------


def test_a_working_store_reports_no_problem(store: Store) -> None:
    fill(store, "r", 3)
    store.set_identity_name("s-1", "alice")
    settle(store)
    assert store.problem() is None
    assert store.counters() == (0, 0)


# -- what outlives the store (persistent backends) -------------------------------------------------


def test_everything_survives_reopening(persistent_factory: StoreFactory) -> None:
    store = persistent_factory(history_limit=10)
    fill(store, "r", 12)
    epoch, quiet = store.room("r")[0], store.room("quiet")[0]
    store.set_topic("quiet", "shh")
    store.set_owner("r", "s-1")
    store.set_topic("r", "hello")
    store.set_read_marker("r", "s-1", 7)
    store.set_identity_name("s-1", "alice")
    store.set_identity_name("s-1", "alice2", chosen=True)
    store.hold_dm("s-2", "s-1", dm(1))
    store.hold_dm("s-2", "s-3", dm(2))
    store.hold_dm("s-2", "s-1", dm(3))
    store.forget_dms("s-2", ["dm-1"])
    store.set_dm_consent("s-2", "s-1", "pending", "s-1")
    store.add("gone", message("gone"))
    store.delete_room("gone")
    gone = store.room("gone")[0]

    store = persistent_factory.reopen(store, history_limit=10)
    assert store.room("r") == (epoch, 12) and store.room("quiet") == (quiet, 0)
    assert seqs(store.after("r", 9)) == [10, 11, 12]
    assert seqs(store.before("r", None, 20)) == list(range(3, 13))
    assert (store.owner("r"), store.topic("r"), store.topic("quiet")) == ("s-1", "hello", "shh")
    assert store.read_marker("r", "s-1") == 7
    assert store.identity_name("s-1") == "alice2"
    assert store.subject_of("ALICE2") == "s-1" and store.subject_of("alice") is None
    assert store.held_dms("s-2") == [("s-3", dm(2)), ("s-1", dm(3))]
    assert store.dm_consent("s-1", "s-2") == ("pending", "s-1")
    assert store.room("gone") == (gone, 0) and store.before("gone", None, 5) == []
    assert store.add("r", message("r", "after"))["seq"] == 13
