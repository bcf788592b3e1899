"""The durable store: SQLite in WAL mode, written by one background thread.

The hub calls the store synchronously on the event loop, on the fan-out path, so nothing here
may wait for the disk. Each room keeps an in-memory tail (its last `history_limit` messages, plus
any the writer has not committed yet); replay, resume and history pages are served from it, with
the same answers as MemoryStore. Every change becomes an operation queued for a writer thread
that group-commits whatever arrived within `FLUSH_SECONDS` in one transaction. A failed write is
logged and the database marked unclean, but the relay carries on from memory.

The only reads on the event loop are a room's first use since start (its row, tail and read
markers), and an identity, name, held DMs or DM consent not in its cache. They are primary-key
lookups and index range scans, well under a millisecond, and WAL readers never wait for the
writer; that is cheaper and simpler than a round trip to a thread. The caches are bounded and
hold only rows that exist, so lookups of made-up names cost a query each but no memory. The
database keeps more than the tail (up to the retention settings), so raising `--history` and
restarting serves older messages again.

Rows are inserted with multi-row statements rather than `executemany`, because sqlite3 releases
the GIL around every step: one step per row would make the writer queue for the GIL behind the
busy event loop once per row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from relay.names import key as name_key
from relay.store import Store
from shared import protocol as p
from shared.protocol import Event

FLUSH_SECONDS = 0.005
FLUSH_MAX_OPS = 2000
ROWS_PER_STATEMENT = 500
RETENTION_SECONDS = 60.0
CACHE_ENTRIES = 4096
DAY = 86400.0

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
)

Op = tuple[Any, ...]
K = TypeVar("K")
V = TypeVar("V")


class _Room:
    """A room as the event loop sees it; `committed` is advanced by the writer thread."""

    __slots__ = (
        "committed",
        "epoch",
        "messages",
        "name",
        "owner",
        "reads",
        "seq",
        "topic",
    )

    def __init__(self, name: str, epoch: str, seq: int) -> None:
        self.name = name
        self.epoch = epoch
        self.seq = seq
        self.committed = seq
        self.messages: deque[Event] = deque()
        self.owner: str | None = None
        self.topic: str | None = None
        self.reads: dict[str, int] = {}


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

    `retain_messages` (per room) and `retain_days` bound what the database keeps (0: no bound);
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
    ) -> None:
        self._path = Path(path)
        self._tail = min(history_limit, retain_messages) if retain_messages else history_limit
        self._retain_messages = retain_messages
        self._retain_days = retain_days
        self._retention_seconds = retention_seconds
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        # Rooms never used get this epoch until their first change, so it stays what they said.
        self._new_epoch = secrets.token_hex(6)
        self._submitted = 0
        self._written = 0
        self._names: _Cache[str, str] = _Cache(CACHE_ENTRIES, self._written_ops)
        # None: the name was just given up, but the database does not know yet.
        self._subjects: _Cache[str, str | None] = _Cache(CACHE_ENTRIES, self._written_ops)
        self._dms: _Cache[str, list[tuple[str, Event]]] = _Cache(CACHE_ENTRIES, self._written_ops)
        self._consent: _Cache[tuple[str, str], tuple[str, str]] = _Cache(
            CACHE_ENTRIES, self._written_ops
        )
        self._floors: dict[str, tuple[str, int]] = {}
        self._queue: queue.SimpleQueue[Op | threading.Event | None] = queue.SimpleQueue()
        self._lost = False
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(self._path)
        self._open()
        self._writer = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
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
        self._retain(db)

    def flush(self) -> None:
        """Wait until the writer has dealt with every change made so far.

        Only tests call it: it lets them look at the database, or at retention's effect, the
        moment it is there, without sleeping or closing the store.
        """
        done = threading.Event()
        self._queue.put(done)
        done.wait()

    def close(self) -> None:
        """Commit what is pending, mark the database cleanly closed and stop the writer."""
        self._queue.put(None)
        self._writer.join()
        self._db.close()

    # -- the Store interface (event loop) -------------------------------------------------------

    def room(self, room: str) -> tuple[str, int]:
        state = self._peek(room)
        return state.epoch, state.seq

    def append(self, room: str, message: Event) -> None:
        state = self._room(room)
        state.seq = message["seq"]
        kept = state.messages
        kept.append(message)
        self._trim_tail(state)
        self._submit(("m", state, message, self._clock()))

    def after(self, room: str, seq: int) -> list[Event] | None:
        state = self._trimmed(room)
        if seq >= state.seq:
            return [] if seq == state.seq else None
        kept = state.messages
        # Resume covers `history_limit` messages, however many more the tail holds right now.
        if state.seq - seq > self._tail or not kept or kept[0]["seq"] > seq + 1:
            return None
        start = len(kept) - (state.seq - seq)
        return [kept[i] for i in range(start, len(kept))]

    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        state = self._trimmed(room)
        if limit <= 0:
            return []
        kept = state.messages
        if not kept:
            return []
        # The tail may briefly hold more than `history_limit`; serve no more than that.
        first = max(kept[0]["seq"], state.seq - self._tail + 1)
        upper = state.seq + 1 if before is None else min(before, state.seq + 1)
        end = len(kept) - (state.seq + 1 - upper)
        start = max(len(kept) - (state.seq + 1 - first), end - limit)
        return [kept[i] for i in range(start, end)] if end > start else []

    def delete_room(self, room: str) -> None:
        # A fresh room replaces the old one at once, so its next use cannot read rows the
        # writer has not deleted yet.
        self._rooms[room] = _Room(room, secrets.token_hex(6), 0)
        self._submit(("d", room))
        self._submit(("r", room, self._rooms[room].epoch))

    def owner(self, room: str) -> str | None:
        return self._peek(room).owner

    def set_owner(self, room: str, subject: str) -> None:
        self._room(room).owner = subject
        self._submit(("o", room, subject))

    def topic(self, room: str) -> str | None:
        return self._peek(room).topic

    def set_topic(self, room: str, topic: str) -> None:
        self._room(room).topic = topic
        self._submit(("t", room, topic))

    def read_marker(self, room: str, subject: str) -> int:
        return self._peek(room).reads.get(subject, 0)

    def set_read_marker(self, room: str, subject: str, seq: int) -> None:
        self._room(room).reads[subject] = seq
        self._submit(("k", room, subject, seq))

    def identity_name(self, subject: str) -> str | None:
        return self._names.get(
            subject,
            lambda: _first(
                self._db.execute(
                    "SELECT name FROM identities WHERE subject = ?", (subject,)
                ).fetchone()
            ),
        )

    def set_identity_name(self, subject: str, name: str) -> None:
        old = self.identity_name(subject)
        # The same name may still point at another identity that took it meanwhile.
        if old == name and self.subject_of(name) == subject:
            return
        freed = old if old is not None and self.subject_of(old) == subject else None
        self._submit(("i", subject, name, None if old is None else name_key(old)))
        if freed is not None:
            self._subjects.put(name_key(freed), None, self._submitted)
        self._names.put(subject, name, self._submitted)
        self._subjects.put(name_key(name), subject, self._submitted)

    def subject_of(self, name: str) -> str | None:
        folded = name_key(name)
        return self._subjects.get(
            folded,
            lambda: _first(
                self._db.execute("SELECT subject FROM names WHERE folded = ?", (folded,)).fetchone()
            ),
        )

    def hold_dm(self, to: str, sender: str, event: Event) -> None:
        held = self._held(to)
        held.append((sender, event))
        self._submit(("h", to, sender, event))
        self._dms.put(to, held, self._submitted)

    def held_dms(self, to: str) -> list[tuple[str, Event]]:
        return list(self._held(to))

    def drop_dms(self, to: str, sender: str) -> None:
        held = [held for held in self._held(to) if held[0] != sender]
        self._submit(("x", to, sender))
        self._dms.put(to, held, self._submitted)

    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        pair = _pair(a, b)

        def load() -> tuple[str, str] | None:
            row = self._db.execute(
                "SELECT state, requester FROM consent WHERE a = ? AND b = ?", pair
            ).fetchone()
            return None if row is None else (row[0], row[1])

        return self._consent.get(pair, load)

    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None:
        pair = _pair(a, b)
        self._submit(("c", *pair, state, requester))
        self._consent.put(pair, (state, requester), self._submitted)

    # -- event-loop helpers ---------------------------------------------------------------------

    def _peek(self, name: str) -> _Room:
        """The room, to look at: one that does not exist yet is shown empty but not created."""
        state = self._rooms.get(name)
        if state is None:
            state = self._load(name)
            if state is None:
                return _Room(name, self._new_epoch, 0)
            self._rooms[name] = state
        return state

    def _room(self, name: str) -> _Room:
        """The room, to change: created on its first change."""
        state = self._rooms.get(name)
        if state is None:
            state = self._load(name)
            if state is None:
                state = _Room(name, self._new_epoch, 0)
                self._submit(("r", name, state.epoch))
            self._rooms[name] = state
        return state

    def _load(self, name: str) -> _Room | None:
        """A room's first use since start: its row, tail and read markers from the database."""
        db = self._db
        row = db.execute(
            "SELECT epoch, seq, owner, topic FROM rooms WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            return None
        state = _Room(name, row[0], row[1])
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
            rows = self._db.execute(
                "SELECT sender, event FROM dms WHERE recipient = ? ORDER BY id", (to,)
            )
            return [(sender, json.loads(event)) for sender, event in rows]

        held = self._dms.get(to, load)
        assert held is not None
        return held

    def _trimmed(self, name: str) -> _Room:
        """The room without the messages retention has deleted since they were loaded."""
        state = self._peek(name)
        self._trim_tail(state)
        floor = self._floors.get(name)
        if floor is not None and floor[0] == state.epoch:
            kept = state.messages
            while kept and kept[0]["seq"] < floor[1]:
                kept.popleft()
        return state

    def _trim_tail(self, state: _Room) -> None:
        """Down to `history_limit` messages, keeping every one the writer has not committed."""
        kept = state.messages
        while len(kept) > self._tail and kept[0]["seq"] <= state.committed:
            kept.popleft()

    def _submit(self, op: Op) -> None:
        """Queue a write; the writer batches what arrives while it commits or sleeps."""
        self._submitted += 1
        self._queue.put(op)

    def _written_ops(self) -> int:
        """How many of the submitted operations the writer is done with (committed or failed)."""
        return self._written

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        db = _connect(self._path)
        retaining = bool(self._retain_messages or self._retain_days)
        next_retention = time.monotonic() + self._retention_seconds
        failing = False
        running = True
        while running:
            timeout = max(next_retention - time.monotonic(), 0.01) if retaining else None
            try:
                items = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                items = []
            ops, waiters, running = self._collect(items)
            try:
                self._write(db, ops)
                if retaining and time.monotonic() >= next_retention:
                    next_retention = time.monotonic() + self._retention_seconds
                    self._retain(db)
            except Exception:
                # Once per outage: a full or read-only disk would fail every batch.
                if not failing:
                    log.exception("could not write to %s; changes are being lost", self._path)
                failing = True
                with contextlib.suppress(sqlite3.Error):
                    if db.in_transaction:
                        db.execute("ROLLBACK")
            else:
                if failing and ops:
                    log.warning("writing to %s works again", self._path)
                    failing = False
            finally:
                self._written += len(ops)
                for waiter in waiters:
                    waiter.set()
        try:
            clean = "0" if self._lost else "1"
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', ?)", (clean,))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            log.exception("could not mark %s as closed cleanly", self._path)
        finally:
            db.close()

    def _collect(
        self, items: list[Op | threading.Event | None]
    ) -> tuple[list[Op], list[threading.Event], bool]:
        """Gather what arrives within FLUSH_SECONDS of the first item into one batch.

        Sleeping, rather than waiting on the queue, keeps the writer from waking (and taking
        the GIL from the event loop) once per hand-off.
        """
        ops: list[Op] = []
        waiters: list[threading.Event] = []
        slept = False
        while items:
            item = items.pop()
            if item is None:
                return ops, waiters, False
            if isinstance(item, threading.Event):
                waiters.append(item)
                return ops, waiters, True
            ops.append(item)
            if len(ops) >= FLUSH_MAX_OPS:
                break
            if not slept:
                time.sleep(FLUSH_SECONDS)
                slept = True
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return ops, waiters, True

    def _write(self, db: sqlite3.Connection, ops: list[Op]) -> None:
        if not ops:
            return
        batch = _Batch()
        try:
            db.execute("BEGIN")
            for op in ops:
                kind = op[0]
                if kind == "m":
                    batch.add_message(op[1], op[2], op[3])
                elif kind == "k":
                    batch.reads[op[1], op[2]] = op[3]
                else:
                    batch.write(db)
                    _write_op(db, op)
            batch.write(db)
            db.execute("COMMIT")
        except Exception:
            self._lost = True
            raise
        for state, seq in batch.committed:
            state.committed = seq

    def _retain(self, db: sqlite3.Connection) -> None:
        """Delete what the retention settings no longer keep; runs on start and in the writer."""
        if not (self._retain_messages or self._retain_days):
            return
        cutoff = self._clock() - self._retain_days * DAY
        db.execute("BEGIN")
        for name, epoch, seq in db.execute("SELECT name, epoch, seq FROM rooms").fetchall():
            floor = seq - self._retain_messages + 1 if self._retain_messages else 1
            if self._retain_days:
                young = db.execute(
                    "SELECT seq FROM messages WHERE room = ? AND at >= ? ORDER BY seq LIMIT 1",
                    (name, cutoff),
                ).fetchone()
                floor = max(floor, seq + 1 if young is None else young[0])
            if floor > 1:
                db.execute("DELETE FROM messages WHERE room = ? AND seq < ?", (name, floor))
                self._floors[name] = (epoch, floor)
        db.execute("COMMIT")


class _Batch:
    """Rows collected from consecutive operations, written with a few multi-row statements."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, int, float, str]] = []
        self.seqs: dict[str, tuple[str, int]] = {}
        self.reads: dict[tuple[str, str], int] = {}
        self.committed: list[tuple[_Room, int]] = []

    def add_message(self, state: _Room, message: Event, at: float) -> None:
        seq = message["seq"]
        self.messages.append((state.name, seq, at, p.encode(message)))
        self.seqs[state.name] = (state.epoch, seq)
        self.committed.append((state, seq))

    def write(self, db: sqlite3.Connection) -> None:
        _insert(db, "INSERT OR REPLACE INTO messages VALUES", 4, self.messages, "")
        _insert(
            db,
            "INSERT INTO rooms (name, epoch, seq) VALUES",
            3,
            ((name, epoch, seq) for name, (epoch, seq) in self.seqs.items()),
            "ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
        )
        _insert(
            db,
            "INSERT OR REPLACE INTO reads VALUES",
            3,
            ((room, subject, seq) for (room, subject), seq in self.reads.items()),
            "",
        )
        self.messages, self.seqs, self.reads = [], {}, {}


def _write_op(db: sqlite3.Connection, op: Op) -> None:
    """One of the rarer changes, written in the order it was made."""
    kind, key = op[0], op[1]
    if kind == "r":
        db.execute("INSERT OR REPLACE INTO rooms (name, epoch, seq) VALUES (?, ?, 0)", op[1:])
    elif kind == "o":
        db.execute("UPDATE rooms SET owner = ? WHERE name = ?", (op[2], key))
    elif kind == "t":
        db.execute("UPDATE rooms SET topic = ? WHERE name = ?", (op[2], key))
    elif kind == "d":
        for table, column in (("messages", "room"), ("reads", "room"), ("rooms", "name")):
            db.execute(f"DELETE FROM {table} WHERE {column} = ?", (key,))
    elif kind == "i":
        db.execute("INSERT OR REPLACE INTO identities VALUES (?, ?)", (key, op[2]))
        if op[3] is not None:
            db.execute("DELETE FROM names WHERE folded = ? AND subject = ?", (op[3], key))
        db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name_key(op[2]), key))
    elif kind == "h":
        db.execute(
            "INSERT INTO dms (recipient, sender, event) VALUES (?, ?, ?)",
            (*op[1:3], p.encode(op[3])),
        )
    elif kind == "x":
        db.execute("DELETE FROM dms WHERE recipient = ? AND sender = ?", (key, op[2]))
    else:
        db.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?)", op[1:])


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _first(row: Sequence[Any] | None) -> Any:
    return None if row is None else row[0]


def _insert(
    db: sqlite3.Connection, head: str, width: int, rows: Iterable[Sequence[Any]], tail: str
) -> None:
    rows = list(rows)
    group = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = ", ".join([group] * len(chunk))
        db.execute(f"{head} {values} {tail}", [value for row in chunk for value in row])


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.create_function("name_key", 1, name_key, deterministic=True)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db
