"""The durable store: SQLite in WAL mode, written by one background thread.

The hub calls the store synchronously on the event loop, on the fan-out path, so nothing here
may wait for the disk. Each room keeps an in-memory tail (its last `history_limit` messages, plus
any the writer has not committed yet); replay, resume and history pages are served from it, with
the same answers as MemoryStore. Every change becomes an operation queued for the writer
thread (`relay.store.writer`), which group-commits them and keeps them while the database cannot
be written; `problem()` tells the hub to refuse new messages until they go in.

The only reads on the event loop are a room's first use since start (its row, tail and read
markers), and an identity, name, held DMs or DM consent not in its cache. They are primary-key
lookups and index range scans, well under a millisecond, and WAL readers never wait for the
writer; that is cheaper and simpler than a round trip to a thread. The caches are bounded and
hold only rows that exist, so lookups of made-up names cost a query each but no memory. The
database keeps more than the tail (up to the retention settings), so raising `--history` and
restarting serves older messages again.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from relay.names import key as name_key
from relay.store.base import Store, seq_key
from relay.store.writer import (
    AppendMessage,
    CreateRoom,
    DeleteRoom,
    DropDMs,
    ForgetDMs,
    HoldDM,
    Op,
    RoomState,
    SeeIdentity,
    SetConsent,
    SetName,
    SetOwner,
    SetReadMarker,
    SetTopic,
    Writer,
    connect,
)
from shared.protocol import Event

RETENTION_SECONDS = 60.0
CACHE_ENTRIES = 4096
# The in-memory tails of all rooms together: at most this many rooms and messages (the least
# recently used room whose changes are all written is forgotten first; the database has it).
ROOMS_CACHED = 4096
TAIL_BUDGET = 200_000
# Anonymous identities not seen for this long are forgotten (see Writer._forget_identities).
FORGET_DAYS = 30.0

log = logging.getLogger("relay.sqlite_store")

# Each entry takes the schema from user_version i to i + 1.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE rooms (
        name TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL,
        owner TEXT, topic TEXT
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        room TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, event TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE TABLE identities (subject TEXT PRIMARY KEY, name TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE names (folded TEXT PRIMARY KEY, subject TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE dms (
        id INTEGER PRIMARY KEY, recipient TEXT NOT NULL, sender TEXT NOT NULL,
        event TEXT NOT NULL
    );
    CREATE INDEX dms_recipient ON dms (recipient, id);
    CREATE TABLE consent (
        a TEXT NOT NULL, b TEXT NOT NULL, state TEXT NOT NULL, requester TEXT NOT NULL,
        PRIMARY KEY (a, b)
    ) WITHOUT ROWID;
    CREATE TABLE reads (
        room TEXT NOT NULL, subject TEXT NOT NULL, seq INTEGER NOT NULL,
        PRIMARY KEY (room, subject)
    ) WITHOUT ROWID;
    """,
    # Names are indexed by their look-alike key (relay.names.key), no longer by casefold.
    "UPDATE OR REPLACE names SET folded = name_key(folded);",
    # Identities remember when they were last seen and whether they picked their own name, so
    # the relay can forget anonymous ones never seen again. Rows from before are kept.
    """
    ALTER TABLE identities ADD COLUMN seen REAL NOT NULL DEFAULT 0;
    ALTER TABLE identities ADD COLUMN chosen INTEGER NOT NULL DEFAULT 0;
    UPDATE identities SET seen = CAST(strftime('%s', 'now') AS REAL), chosen = 1;
    """,
)

K = TypeVar("K")
V = TypeVar("V")


class _Cache(Generic[K, V]):
    """The most recently used rows of one table, in front of the database.

    An entry the writer has not committed yet is not evicted, since the database would still
    answer with the old row; while the writer lags, the cache may hold more than `limit`.
    """

    def __init__(self, limit: int, written: Callable[[], int]) -> None:
        self._limit = limit
        self._written = written
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value, or else the database's; a row that does not exist is not cached."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry[0]
        value = load()
        if value is not None:
            self.put(key, value, 0)
        return value

    def put(self, key: K, value: V, op: int) -> None:
        """Remember `value`, which the database has once the writer is past operation `op`."""
        self._entries[key] = (value, op)
        self._entries.move_to_end(key)
        entries = self._entries
        while len(entries) > self._limit and next(iter(entries.values()))[1] <= self._written():
            entries.popitem(last=False)


class SQLiteStore(Store):
    """Everything the relay remembers, in one SQLite file that outlives it.

    `retain_messages` (per room) and `retain_days` bound what the database keeps (0: no bound),
    `max_bytes` its size (0: what the disk holds; at the cap it behaves as on a full disk);
    `history_limit` is how many messages per room stay in memory for replay and resume.
    """

    def __init__(
        self,
        path: str | Path,
        history_limit: int = 1000,
        retain_messages: int = 0,
        retain_days: float = 0.0,
        retention_seconds: float = RETENTION_SECONDS,
        clock: Callable[[], float] = time.time,
        max_bytes: int = 0,
        tail_budget: int = TAIL_BUDGET,
        forget_days: float = FORGET_DAYS,
    ) -> None:
        self._path = Path(path)
        self._tail = min(history_limit, retain_messages) if retain_messages else history_limit
        self._clock = clock
        # Least recently used first; at most ROOMS_CACHED rooms and `tail_budget` messages.
        self._rooms: OrderedDict[str, RoomState] = OrderedDict()
        self._tail_budget = max(tail_budget, 2 * self._tail)
        self._tail_total = 0
        # Rooms released (deleted) whose deletion the writer has not done yet: name -> op.
        self._gone: dict[str, int] = {}
        # Rooms never used get this epoch until their first change, so it stays what they said.
        self._new_epoch = secrets.token_hex(6)
        self._submitted = 0
        self._writer = Writer(
            self._path,
            max_bytes=max_bytes,
            retain_messages=retain_messages,
            retain_days=retain_days,
            retention_seconds=retention_seconds,
            forget_days=forget_days,
            clock=clock,
        )
        self._names: _Cache[str, str] = _Cache(CACHE_ENTRIES, self._written_ops)
        # None: the name was just given up, but the database does not know yet.
        self._subjects: _Cache[str, str | None] = _Cache(CACHE_ENTRIES, self._written_ops)
        self._dms: _Cache[str, list[tuple[str, Event]]] = _Cache(CACHE_ENTRIES, self._written_ops)
        self._consent: _Cache[tuple[str, str], tuple[str, str]] = _Cache(
            CACHE_ENTRIES, self._written_ops
        )
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = connect(self._path)
        self._open()
        self._writer.start()

    # -- start and stop -------------------------------------------------------------------------

    def _open(self) -> None:
        """Migrate, and start a new epoch everywhere if the last run did not close cleanly.

        A crash can lose the last few milliseconds of messages, and their seqs will be handed
        out again; a new epoch tells resuming clients not to trust the seqs they hold.
        """
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"{self._path} has schema {version}, newer than this relay knows")
        for number in range(version, len(MIGRATIONS)):
            db.executescript(f"BEGIN; {MIGRATIONS[number]} PRAGMA user_version = {number + 1};")
            db.execute("COMMIT")
        db.execute("BEGIN")
        clean = db.execute("SELECT value FROM meta WHERE key = 'clean'").fetchone()
        if clean is not None and clean[0] != "1":
            log.warning("%s was not closed cleanly; every room starts a new epoch", self._path)
            db.execute("UPDATE rooms SET epoch = lower(hex(randomblob(6)))")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")
        db.execute("COMMIT")
        self._writer.retain(db)

    def flush(self) -> None:
        """Wait until the writer has dealt with every change made so far.

        Only tests call it: it lets them look at the database, or at retention's effect, the
        moment it is there, without sleeping or closing the store.
        """
        done = threading.Event()
        self._writer.queue.put(done)
        done.wait()

    def close(self) -> None:
        """Commit what is pending, mark the database cleanly closed and stop the writer."""
        self._writer.queue.put(None)
        self._writer.join()
        self._db.close()
        for orphan in self._writer.orphans:
            orphan.close()

    def problem(self) -> str | None:
        return self._writer.problem

    def counters(self) -> tuple[int, int]:
        return self._writer.failures, self._writer.pending

    # -- the Store interface (event loop) -------------------------------------------------------

    def room(self, room: str) -> tuple[str, int]:
        state = self._peek(room)
        return state.epoch, state.seq

    def add(self, room: str, message: Event, plain: str | None = None) -> Event:
        message["seq"] = self._peek(room).seq + 1
        self.append(room, message)
        return message

    def append(self, room: str, message: Event) -> None:
        state = self._room(room)
        state.seq = message["seq"]
        kept = state.messages
        kept.append(message)
        self._tail_total += 1
        self._trim_tail(state)
        self._change(state, AppendMessage(state, message, self._clock()))
        if self._tail_total > self._tail_budget:
            self._evict()

    def after(self, room: str, seq: int) -> list[Event] | None:
        state = self._trimmed(room)
        if seq >= state.seq:
            return [] if seq == state.seq else None
        kept = state.messages
        # Resume covers `history_limit` messages, however many more the tail holds right now.
        if state.seq - seq > self._tail or not kept or kept[0]["seq"] > seq + 1:
            return None
        start = bisect_right(kept, seq, key=seq_key)
        return [kept[i] for i in range(start, len(kept))]

    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        state = self._trimmed(room)
        if limit <= 0:
            return []
        kept = state.messages
        if not kept:
            return []
        # The tail may briefly hold more than `history_limit`; serve no more than that.
        first = bisect_left(kept, state.seq - self._tail + 1, key=seq_key)
        end = len(kept) if before is None else bisect_left(kept, before, key=seq_key)
        start = max(first, end - limit)
        return [kept[i] for i in range(start, end)] if end > start else []

    def delete_room(self, room: str) -> None:
        # A fresh room replaces the old one at once, so its next use cannot read rows the
        # writer has not deleted yet.
        old = self._rooms.pop(room, None)
        if old is not None:
            self._tail_total -= len(old.messages)
        state = self._rooms[room] = RoomState(room, secrets.token_hex(6), 0)
        self._submit(DeleteRoom(room))
        self._change(state, CreateRoom(room, state.epoch))

    def release(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is None or state.seq or state.topic is not None:
            return
        del self._rooms[room]
        self._submit(DeleteRoom(room))
        self._gone[room] = self._submitted
        gone = self._gone
        while gone and next(iter(gone.values())) <= self._writer.written:
            del gone[next(iter(gone))]

    def owner(self, room: str) -> str | None:
        return self._peek(room).owner

    def set_owner(self, room: str, subject: str) -> None:
        state = self._room(room)
        state.owner = subject
        self._change(state, SetOwner(room, subject))

    def topic(self, room: str) -> str | None:
        return self._peek(room).topic

    def set_topic(self, room: str, topic: str) -> None:
        state = self._room(room)
        state.topic = topic
        self._change(state, SetTopic(room, topic))

    def read_marker(self, room: str, subject: str) -> int:
        return self._peek(room).reads.get(subject, 0)

    def set_read_marker(self, room: str, subject: str, seq: int) -> None:
        state = self._room(room)
        state.reads[subject] = seq
        self._change(state, SetReadMarker(room, subject, seq))

    def identity_name(self, subject: str) -> str | None:
        return self._names.get(
            subject,
            lambda: _first(
                self._reader()
                .execute("SELECT name FROM identities WHERE subject = ?", (subject,))
                .fetchone()
            ),
        )

    def set_identity_name(self, subject: str, name: str, chosen: bool = False) -> None:
        old = self.identity_name(subject)
        # The same name may still point at another identity that took it meanwhile.
        if old == name and self.subject_of(name) == subject:
            self._submit(SeeIdentity(subject, self._clock(), int(chosen)))
            return
        freed = old if old is not None and self.subject_of(old) == subject else None
        folded = None if old is None else name_key(old)
        self._submit(SetName(subject, name, folded, self._clock(), int(chosen)))
        if freed is not None:
            self._subjects.put(name_key(freed), None, self._submitted)
        self._names.put(subject, name, self._submitted)
        self._subjects.put(name_key(name), subject, self._submitted)

    def subject_of(self, name: str) -> str | None:
        folded = name_key(name)
        return self._subjects.get(
            folded,
            lambda: _first(
                self._reader()
                .execute("SELECT subject FROM names WHERE folded = ?", (folded,))
                .fetchone()
            ),
        )

    def hold_dm(self, to: str, sender: str, event: Event) -> None:
        held = self._held(to)
        held.append((sender, event))
        self._submit(HoldDM(to, sender, event))
        self._dms.put(to, held, self._submitted)

    def held_dms(self, to: str) -> list[tuple[str, Event]]:
        return list(self._held(to))

    def drop_dms(self, to: str, sender: str) -> None:
        held = [held for held in self._held(to) if held[0] != sender]
        self._submit(DropDMs(to, sender))
        self._dms.put(to, held, self._submitted)

    def forget_dms(self, to: str, ids: list[str]) -> None:
        gone = set(ids)
        held = [held for held in self._held(to) if held[1]["id"] not in gone]
        self._submit(ForgetDMs(to, ids))
        self._dms.put(to, held, self._submitted)

    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        pair = _pair(a, b)

        def load() -> tuple[str, str] | None:
            row = (
                self._reader()
                .execute("SELECT state, requester FROM consent WHERE a = ? AND b = ?", pair)
                .fetchone()
            )
            return None if row is None else (row[0], row[1])

        return self._consent.get(pair, load)

    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None:
        pair = _pair(a, b)
        self._submit(SetConsent(*pair, state, requester))
        self._consent.put(pair, (state, requester), self._submitted)

    # -- event-loop helpers ---------------------------------------------------------------------

    def _cached(self, name: str) -> RoomState | None:
        """The room if it exists, from memory or loaded into it; the most recently used now."""
        state = self._rooms.get(name)
        if state is not None:
            self._rooms.move_to_end(name)
            return state
        state = self._load(name)
        if state is not None:
            self._keep(state)
        return state

    def _peek(self, name: str) -> RoomState:
        """The room, to look at: one that does not exist yet is shown empty but not created."""
        state = self._cached(name)
        return RoomState(name, self._new_epoch, 0) if state is None else state

    def _room(self, name: str) -> RoomState:
        """The room, to change: created on its first change."""
        state = self._cached(name)
        if state is None:
            state = RoomState(name, self._new_epoch, 0)
            # The next room gets another: a room released and used again must not look
            # like the one before it to a client resuming with the old epoch.
            self._new_epoch = secrets.token_hex(6)
            self._change(state, CreateRoom(name, state.epoch))
            self._keep(state)
        return state

    def _keep(self, state: RoomState) -> None:
        self._rooms[state.name] = state
        self._tail_total += len(state.messages)
        self._evict()

    def _evict(self) -> None:
        """Forget the least recently used rooms beyond the budgets, if the database has them.

        A room with changes the writer has not done yet is passed over (moved to the back);
        a few at a time, so a lagging writer costs a few steps per call, not a scan.
        """
        rooms = self._rooms
        for _ in range(8):
            if len(rooms) <= ROOMS_CACHED and self._tail_total <= self._tail_budget:
                return
            if len(rooms) <= 1:
                return
            name, state = next(iter(rooms.items()))
            if state.committed >= state.seq and state.op <= self._writer.written:
                del rooms[name]
                self._tail_total -= len(state.messages)
            else:
                rooms.move_to_end(name)

    def _change(self, state: RoomState, op: Op) -> None:
        self._submit(op)
        state.op = self._submitted

    def _reader(self) -> sqlite3.Connection:
        """The event loop's connection, reopened after the writer restored a deleted file."""
        if self._writer.reader_stale:
            self._writer.reader_stale = False
            self._writer.orphans.append(self._db)
            self._db = connect(self._path)
        return self._db

    def _load(self, name: str) -> RoomState | None:
        """A room's first use since start: its row, tail and read markers from the database."""
        gone = self._gone.get(name)
        if gone is not None:
            if gone > self._writer.written:
                return None
            del self._gone[name]
        db = self._reader()
        row = db.execute(
            "SELECT epoch, seq, owner, topic FROM rooms WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        state = RoomState(name, row[0], row[1])
        state.owner, state.topic = row[2], row[3]
        if self._tail:
            rows = db.execute(
                "SELECT event FROM messages WHERE room = ? ORDER BY seq DESC LIMIT ?",
                (name, self._tail),
            ).fetchall()
            state.messages.extend(json.loads(event) for (event,) in reversed(rows))
        state.reads = dict(db.execute("SELECT subject, seq FROM reads WHERE room = ?", (name,)))
        return state

    def _held(self, to: str) -> list[tuple[str, Event]]:
        def load() -> list[tuple[str, Event]]:
            rows = self._reader().execute(
                "SELECT sender, event FROM dms WHERE recipient = ? ORDER BY id", (to,)
            )
            return [(sender, json.loads(event)) for sender, event in rows]

        held = self._dms.get(to, load)
        assert held is not None
        return held

    def _trimmed(self, name: str) -> RoomState:
        """The room without the messages retention has deleted since they were loaded."""
        state = self._peek(name)
        self._trim_tail(state)
        floor = self._writer.floors.get(name)
        if floor is not None and floor[0] == state.epoch:
            kept = state.messages
            while kept and kept[0]["seq"] < floor[1]:
                kept.popleft()
                self._tail_total -= 1
        return state

    def _trim_tail(self, state: RoomState) -> None:
        """Down to `history_limit` messages, keeping every one the writer has not committed."""
        kept = state.messages
        while len(kept) > self._tail and kept[0]["seq"] <= state.committed:
            kept.popleft()
            self._tail_total -= 1

    def _submit(self, op: Op) -> None:
        """Queue a write; the writer batches what arrives while it commits or sleeps."""
        self._submitted += 1
        self._writer.queue.put(op)

    def _written_ops(self) -> int:
        """How many of the submitted operations the writer is done with (committed or failed)."""
        return self._writer.written


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _first(row: Sequence[Any] | None) -> Any:
    return None if row is None else row[0]
