"""The durable store: SQLite in WAL mode, written by one background thread.

The hub calls the store synchronously on the event loop, on the fan-out path, so nothing here
may wait for the disk. Each room keeps an in-memory tail (its last `history_limit` messages, plus
any the writer has not committed yet); replay, resume and history pages are served from it, with
the same answers as MemoryStore. Every change becomes an operation queued for a writer thread
that group-commits whatever arrived within `FLUSH_SECONDS` in one transaction. A row the
database refuses is dropped alone (logged, database marked unclean). When the database cannot be
written at all (disk full, read-only, file deleted), the changes stay queued in memory and are
retried with backoff, and `problem()` tells the hub to refuse new messages until they go in.

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
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from relay.names import key as name_key
from relay.store import Store, seq_key
from shared import protocol as p
from shared.protocol import Event

FLUSH_SECONDS = 0.005
FLUSH_MAX_OPS = 2000
# While the database cannot be written: first retry after RETRY_FIRST seconds, doubling up to
# RETRY_LAST; at most PENDING_MAX changes wait in memory for it.
RETRY_FIRST = 0.05
RETRY_LAST = 2.0
PENDING_MAX = 200_000
ROWS_PER_STATEMENT = 500
RETENTION_SECONDS = 60.0
CACHE_ENTRIES = 4096
# The in-memory tails of all rooms together: at most this many rooms and messages (the least
# recently used room whose changes are all written is forgotten first; the database has it).
ROOMS_CACHED = 4096
TAIL_BUDGET = 200_000
DAY = 86400.0
# Anonymous identities not seen for this long are forgotten (see _forget_identities).
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
        "op",
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
        # The last operation submitted for the room: until the writer is past it, the
        # database does not have the room as memory does, so memory must not forget it.
        self.op = 0
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
        self._forget_days = forget_days
        self._max_bytes = max_bytes
        self._tail = min(history_limit, retain_messages) if retain_messages else history_limit
        self._retain_messages = retain_messages
        self._retain_days = retain_days
        self._retention_seconds = retention_seconds
        self._clock = clock
        # Least recently used first; at most ROOMS_CACHED rooms and `tail_budget` messages.
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        self._tail_budget = max(tail_budget, 2 * self._tail)
        self._tail_total = 0
        # Rooms released (deleted) whose deletion the writer has not done yet: name -> op.
        self._gone: dict[str, int] = {}
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
        # Set by the writer: why it cannot write now (None while it can); read by the hub.
        self._problem: str | None = None
        self.failures = 0
        self.pending = 0
        self._inode: tuple[int, int] | None = None
        self._orphans: list[sqlite3.Connection] = []
        self._reader_stale = False
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
        for orphan in self._orphans:
            orphan.close()

    def problem(self) -> str | None:
        return self._problem

    def counters(self) -> tuple[int, int]:
        return self.failures, self.pending

    # -- the Store interface (event loop) -------------------------------------------------------

    def room(self, room: str) -> tuple[str, int]:
        state = self._peek(room)
        return state.epoch, state.seq

    def append(self, room: str, message: Event) -> None:
        state = self._room(room)
        state.seq = message["seq"]
        kept = state.messages
        kept.append(message)
        self._tail_total += 1
        self._trim_tail(state)
        self._change(state, ("m", state, message, self._clock()))
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
        state = self._rooms[room] = _Room(room, secrets.token_hex(6), 0)
        self._submit(("d", room))
        self._change(state, ("r", room, state.epoch))

    def release(self, room: str) -> None:
        state = self._rooms.get(room)
        if state is None or state.seq or state.topic is not None:
            return
        del self._rooms[room]
        self._submit(("d", room))
        self._gone[room] = self._submitted
        gone = self._gone
        while gone and next(iter(gone.values())) <= self._written:
            del gone[next(iter(gone))]

    def owner(self, room: str) -> str | None:
        return self._peek(room).owner

    def set_owner(self, room: str, subject: str) -> None:
        state = self._room(room)
        state.owner = subject
        self._change(state, ("o", room, subject))

    def topic(self, room: str) -> str | None:
        return self._peek(room).topic

    def set_topic(self, room: str, topic: str) -> None:
        state = self._room(room)
        state.topic = topic
        self._change(state, ("t", room, topic))

    def read_marker(self, room: str, subject: str) -> int:
        return self._peek(room).reads.get(subject, 0)

    def set_read_marker(self, room: str, subject: str, seq: int) -> None:
        state = self._room(room)
        state.reads[subject] = seq
        self._change(state, ("k", room, subject, seq))

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
            self._submit(("s", subject, self._clock(), int(chosen)))
            return
        freed = old if old is not None and self.subject_of(old) == subject else None
        folded = None if old is None else name_key(old)
        self._submit(("i", subject, name, folded, self._clock(), int(chosen)))
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
        self._submit(("h", to, sender, event))
        self._dms.put(to, held, self._submitted)

    def held_dms(self, to: str) -> list[tuple[str, Event]]:
        return list(self._held(to))

    def drop_dms(self, to: str, sender: str) -> None:
        held = [held for held in self._held(to) if held[0] != sender]
        self._submit(("x", to, sender))
        self._dms.put(to, held, self._submitted)

    def forget_dms(self, to: str, ids: list[str]) -> None:
        gone = set(ids)
        held = [held for held in self._held(to) if held[1]["id"] not in gone]
        self._submit(("y", to, ids))
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
        self._submit(("c", *pair, state, requester))
        self._consent.put(pair, (state, requester), self._submitted)

    # -- event-loop helpers ---------------------------------------------------------------------

    def _peek(self, name: str) -> _Room:
        """The room, to look at: one that does not exist yet is shown empty but not created."""
        state = self._rooms.get(name)
        if state is not None:
            self._rooms.move_to_end(name)
            return state
        state = self._load(name)
        if state is None:
            return _Room(name, self._new_epoch, 0)
        self._keep(state)
        return state

    def _room(self, name: str) -> _Room:
        """The room, to change: created on its first change."""
        state = self._rooms.get(name)
        if state is not None:
            self._rooms.move_to_end(name)
            return state
        state = self._load(name)
        if state is None:
            state = _Room(name, self._new_epoch, 0)
            # The next room gets another: a room released and used again must not look
            # like the one before it to a client resuming with the old epoch.
            self._new_epoch = secrets.token_hex(6)
            self._change(state, ("r", name, state.epoch))
        self._keep(state)
        return state

    def _keep(self, state: _Room) -> None:
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
            if state.committed >= state.seq and state.op <= self._written:
                del rooms[name]
                self._tail_total -= len(state.messages)
            else:
                rooms.move_to_end(name)

    def _change(self, state: _Room, op: Op) -> None:
        self._submit(op)
        state.op = self._submitted

    def _reader(self) -> sqlite3.Connection:
        """The event loop's connection, reopened after the writer restored a deleted file."""
        if self._reader_stale:
            self._reader_stale = False
            self._orphans.append(self._db)
            self._db = _connect(self._path)
        return self._db

    def _load(self, name: str) -> _Room | None:
        """A room's first use since start: its row, tail and read markers from the database."""
        gone = self._gone.get(name)
        if gone is not None:
            if gone > self._written:
                return None
            del self._gone[name]
        db = self._reader()
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
            rows = self._reader().execute(
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
                self._tail_total -= 1
        return state

    def _trim_tail(self, state: _Room) -> None:
        """Down to `history_limit` messages, keeping every one the writer has not committed."""
        kept = state.messages
        while len(kept) > self._tail and kept[0]["seq"] <= state.committed:
            kept.popleft()
            self._tail_total -= 1

    def _submit(self, op: Op) -> None:
        """Queue a write; the writer batches what arrives while it commits or sleeps."""
        self._submitted += 1
        self._queue.put(op)

    def _written_ops(self) -> int:
        """How many of the submitted operations the writer is done with (committed or failed)."""
        return self._written

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        db = self._connect_writer()
        retaining = bool(self._retain_messages or self._retain_days or self._forget_days)
        next_retention = time.monotonic() + self._retention_seconds
        # Changes not written yet, oldest first: this batch, or every batch since the database
        # stopped taking writes. They were acknowledged; they wait here until it takes them.
        pending: list[Op] = []
        retry_at = 0.0
        backoff = RETRY_FIRST
        running = True
        while running:
            deadlines = [next_retention] if retaining else []
            if pending:
                deadlines.append(retry_at)
            timeout = max(min(deadlines) - time.monotonic(), 0.01) if deadlines else None
            try:
                items = [self._queue.get(timeout=timeout)]
            except queue.Empty:
                items = []
            ops, waiters, running = self._collect(items)
            pending += ops
            self._bound(pending)
            if pending and (time.monotonic() >= retry_at or not running):
                db, done, problem = self._attempt(db, pending)
                del pending[:done]
                self._written += done
                if problem is None:
                    if self._problem is not None:
                        log.warning("writing to %s works again", self._path)
                    self._problem = None
                    retry_at, backoff = 0.0, RETRY_FIRST
                else:
                    self.failures += 1
                    if self._problem is None:
                        log.error(
                            "cannot write to %s: %s; refusing new messages, retrying",
                            self._path,
                            problem,
                        )
                    self._problem = problem
                    retry_at = time.monotonic() + backoff
                    backoff = min(backoff * 2, RETRY_LAST)
            self.pending = len(pending)
            if retaining and not pending and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self._retention_seconds
                try:
                    self._retain(db)
                except sqlite3.Error as exc:
                    _rollback(db)
                    log.error("retention on %s failed: %s", self._path, exc)
            for waiter in waiters:
                waiter.set()
        if pending:
            self._lost = True
            log.error("%s: %d changes could not be written and are lost", self._path, len(pending))
        try:
            clean = "0" if self._lost else "1"
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', ?)", (clean,))
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.error("could not mark %s as closed cleanly: %s", self._path, exc)
        finally:
            db.close()

    def _attempt(
        self, db: sqlite3.Connection, ops: list[Op]
    ) -> tuple[sqlite3.Connection, int, str | None]:
        """Write `ops`: the connection to go on with, how many are done, and what went wrong."""
        try:
            db = self._check_file(db)
            return db, self._commit(db, ops), None
        except _Unavailable as failure:
            return db, failure.done, failure.reason

    def _bound(self, pending: list[Op]) -> None:
        """Keep at most PENDING_MAX changes while the database is failing; drop the oldest.

        New messages are refused while it fails, so only what was in flight and the small
        changes that still happen (names, read markers) pile up here.
        """
        excess = len(pending) - PENDING_MAX
        if excess <= 0:
            return
        for op in pending[:excess]:
            if op[0] == "m":
                op[1].committed = max(op[1].committed, op[2]["seq"])
        del pending[:excess]
        self._written += excess
        if not self._lost:
            log.error("%s: more than %d changes waiting; dropping the oldest", self._path, excess)
        self._lost = True

    def _connect_writer(self) -> sqlite3.Connection:
        db = _connect(self._path)
        if self._max_bytes:
            # The database counts as full at this size, exactly as when the disk is.
            page = db.execute("PRAGMA page_size").fetchone()[0]
            db.execute(f"PRAGMA max_page_count = {max(1, self._max_bytes // page)}")
        self._inode = _inode(self._path)
        return db

    def _check_file(self, db: sqlite3.Connection) -> sqlite3.Connection:
        """The writer's connection, after making sure its file is still the one at `path`.

        SQLite goes on writing to a database file that was deleted (it keeps it open), and
        everything written would vanish with the process. A deleted file is restored from the
        open connection, which still has every committed change; one replaced by another file
        is not touched, and nothing more is written until the relay restarts.
        """
        found = _inode(self._path)
        if found == self._inode:
            return db
        if found is not None:
            raise _Unavailable(0, "the database file was replaced by another one")
        try:
            spare = self._path.with_name(self._path.name + ".restoring")
            with contextlib.closing(sqlite3.connect(spare)) as copy:
                db.backup(copy)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{self._path}{suffix}").unlink()
            spare.replace(self._path)
            restored = self._connect_writer()
        except (OSError, sqlite3.Error) as exc:
            reason = f"the database file was deleted and cannot be restored: {exc}"
            raise _Unavailable(0, reason) from None
        # Closing a connection to the deleted file could delete the new file's WAL, which has
        # the same name: they stay open until the store closes.
        self._orphans.append(db)
        self._reader_stale = True
        log.warning("%s was deleted while in use; restored it from the open database", self._path)
        return restored

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

    def _commit(self, db: sqlite3.Connection, ops: list[Op]) -> int:
        """Write `ops` in one transaction; when that fails, one by one, dropping only bad ones.

        A batch holds many people's changes: one row the database refuses (a text it cannot
        encode, say) must not roll back the rest. An error that says the database cannot be
        written at all (full, read-only, gone) raises `_Unavailable` with how many of `ops`
        are done, so the rest can be tried again. Returns how many are done: all of them.
        """
        try:
            self._write(db, ops)
            return len(ops)
        except Exception as exc:
            _rollback(db)
            if _unavailable(exc):
                raise _Unavailable(0, str(exc)) from None
        for index, op in enumerate(ops):
            try:
                self._write(db, [op])
            except Exception as exc:
                _rollback(db)
                if _unavailable(exc):
                    raise _Unavailable(index, str(exc)) from None
                self._lost = True
                if op[0] == "m":
                    # Done with, as far as the tail is concerned: it may be trimmed past it.
                    op[1].committed = max(op[1].committed, op[2]["seq"])
                log.error("%s refused one change (%s), dropped it: %s", self._path, op[0], exc)
        return len(ops)

    def _write(self, db: sqlite3.Connection, ops: list[Op]) -> None:
        if not ops:
            return
        batch = _Batch()
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
        for state, seq in batch.committed:
            state.committed = seq

    def _retain(self, db: sqlite3.Connection) -> None:
        """Delete what the retention settings no longer keep; runs on start and in the writer."""
        self._forget_identities(db)
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

    def _forget_identities(self, db: sqlite3.Connection) -> None:
        """Delete anonymous identities not seen for `forget_days`, with what only they used.

        Only those that never picked a name with `nick`, own no room and have no DMs waiting:
        a client that comes back later with its token is simply a new identity with the
        token's name. Without this, every one-off connection would stay in the file for good.
        """
        if not self._forget_days:
            return
        cutoff = self._clock() - self._forget_days * DAY
        idle = db.execute(
            "SELECT subject FROM identities WHERE chosen = 0 AND seen < ?"
            " AND subject NOT IN (SELECT recipient FROM dms)"
            " AND subject NOT IN (SELECT owner FROM rooms WHERE owner IS NOT NULL)",
            (cutoff,),
        ).fetchall()
        if not idle:
            return
        db.execute("BEGIN")
        for start in range(0, len(idle), ROWS_PER_STATEMENT):
            chunk = [subject for (subject,) in idle[start : start + ROWS_PER_STATEMENT]]
            marks = ", ".join("?" * len(chunk))
            for table, where in (
                ("identities", f"subject IN ({marks})"),
                ("names", f"subject IN ({marks})"),
                ("reads", f"subject IN ({marks})"),
                ("consent", f"a IN ({marks}) OR b IN ({marks})"),
            ):
                params = chunk * where.count("IN")
                db.execute(f"DELETE FROM {table} WHERE {where}", params)
        db.execute("COMMIT")
        log.info("forgot %d identities not seen for %g days", len(idle), self._forget_days)


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
        db.execute(
            "INSERT INTO identities (subject, name, seen, chosen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (subject) DO UPDATE SET name = excluded.name, seen = excluded.seen,"
            " chosen = max(chosen, excluded.chosen)",
            (key, op[2], op[4], op[5]),
        )
        if op[3] is not None:
            db.execute("DELETE FROM names WHERE folded = ? AND subject = ?", (op[3], key))
        db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name_key(op[2]), key))
    elif kind == "s":
        db.execute(
            "UPDATE identities SET seen = ?, chosen = max(chosen, ?) WHERE subject = ?",
            (op[2], op[3], key),
        )
    elif kind == "h":
        db.execute(
            "INSERT INTO dms (recipient, sender, event) VALUES (?, ?, ?)",
            (*op[1:3], p.encode(op[3])),
        )
    elif kind == "x":
        db.execute("DELETE FROM dms WHERE recipient = ? AND sender = ?", (key, op[2]))
    elif kind == "y":
        ids = op[2]
        for start in range(0, len(ids), ROWS_PER_STATEMENT):
            chunk = ids[start : start + ROWS_PER_STATEMENT]
            marks = ", ".join("?" * len(chunk))
            db.execute(
                f"DELETE FROM dms WHERE recipient = ? AND json_extract(event, '$.id') IN ({marks})",
                [key, *chunk],
            )
    else:
        db.execute("INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?)", op[1:])


class _Unavailable(Exception):
    """The database cannot be written now; the first `done` operations of the batch are."""

    def __init__(self, done: int, reason: str) -> None:
        super().__init__(reason)
        self.done = done
        self.reason = reason


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _unavailable(exc: Exception) -> bool:
    """Whether `exc` says the database cannot be written now, rather than that a row is bad."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")


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
