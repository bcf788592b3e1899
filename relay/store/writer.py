"""The SQLite store's writer thread, and the changes the event loop hands it.

The event loop never waits for the disk: every change becomes one operation (a small named
tuple, one kind per change) on a queue, and this thread group-commits whatever arrived within
`FLUSH_SECONDS` in one transaction. A row the database refuses is dropped alone (logged, the
database marked unclean). When the database cannot be written at all (disk full, read-only,
file deleted), the changes stay queued in memory and are retried with backoff, and `problem`
tells the hub to refuse new messages until they go in.

Rows are inserted with multi-row statements rather than `executemany`, because sqlite3 releases
the GIL around every step: one step per row would make the writer queue for the GIL behind the
busy event loop once per row.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from relay.names import key as name_key
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
DAY = 86400.0

log = logging.getLogger("relay.sqlite_store")


class RoomState:
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


# -- the operations, one kind per change ----------------------------------------------------------


class AppendMessage(NamedTuple):
    """A room message; the writer advances `state.committed` once it is in (or dropped)."""

    state: RoomState
    message: Event
    at: float


class SetReadMarker(NamedTuple):
    room: str
    subject: str
    seq: int


class CreateRoom(NamedTuple):
    room: str
    epoch: str


class SetOwner(NamedTuple):
    room: str
    subject: str


class SetTopic(NamedTuple):
    room: str
    topic: str


class DeleteRoom(NamedTuple):
    """The room's row, messages and read markers (deleted or released)."""

    room: str


class SetName(NamedTuple):
    """The identity's name now; `old_key` is its previous name's look-alike key, to free."""

    subject: str
    name: str
    old_key: str | None
    seen: float
    chosen: int


class SeeIdentity(NamedTuple):
    """The identity was seen again with the name it had."""

    subject: str
    seen: float
    chosen: int


class HoldDM(NamedTuple):
    to: str
    sender: str
    event: Event


class DropDMs(NamedTuple):
    to: str
    sender: str


class ForgetDMs(NamedTuple):
    to: str
    ids: list[str]


class SetConsent(NamedTuple):
    """DM consent of a pair, `a` <= `b`."""

    a: str
    b: str
    state: str
    requester: str


Op = (
    AppendMessage
    | SetReadMarker
    | CreateRoom
    | SetOwner
    | SetTopic
    | DeleteRoom
    | SetName
    | SeeIdentity
    | HoldDM
    | DropDMs
    | ForgetDMs
    | SetConsent
)


class Writer(threading.Thread):
    """The one thread that writes the database; the event loop only puts work on `queue`.

    What the event loop reads back (plain attributes written by this thread): `written`, how
    many queued operations are done with; `problem`, why it cannot write now; `failures` and
    `pending` for /metrics; `floors`, where retention cut each room's history; and
    `reader_stale`, set when a deleted file was restored, which the event loop clears when it
    reopens its reader (adding the old one to `orphans`, closed with the store).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        retain_messages: int,
        retain_days: float,
        retention_seconds: float,
        forget_days: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(name="sqlite-writer", daemon=True)
        self._path = path
        self._max_bytes = max_bytes
        self._retain_messages = retain_messages
        self._retain_days = retain_days
        self._retention_seconds = retention_seconds
        self._forget_days = forget_days
        self._clock = clock
        # An Event is a flush() waiting; None asks the thread to finish and stop.
        self.queue: queue.SimpleQueue[Op | threading.Event | None] = queue.SimpleQueue()
        self.written = 0
        self.problem: str | None = None
        self.failures = 0
        self.pending = 0
        self.floors: dict[str, tuple[str, int]] = {}
        # Connections to a deleted file: kept open until the store closes (see _check_file).
        self.orphans: list[sqlite3.Connection] = []
        self.reader_stale = False
        self._lost = False
        self._inode: tuple[int, int] | None = None

    def run(self) -> None:
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
                items = [self.queue.get(timeout=timeout)]
            except queue.Empty:
                items = []
            ops, waiters, running = self._collect(items)
            pending += ops
            self._bound(pending)
            if pending and (time.monotonic() >= retry_at or not running):
                db, done, problem = self._attempt(db, pending)
                del pending[:done]
                self.written += done
                if problem is None:
                    if self.problem is not None:
                        log.warning("writing to %s works again", self._path)
                    self.problem = None
                    retry_at, backoff = 0.0, RETRY_FIRST
                else:
                    self.failures += 1
                    if self.problem is None:
                        log.error(
                            "cannot write to %s: %s; refusing new messages, retrying",
                            self._path,
                            problem,
                        )
                    self.problem = problem
                    retry_at = time.monotonic() + backoff
                    backoff = min(backoff * 2, RETRY_LAST)
            self.pending = len(pending)
            if retaining and not pending and time.monotonic() >= next_retention:
                next_retention = time.monotonic() + self._retention_seconds
                try:
                    self.retain(db)
                except sqlite3.Error as exc:
                    rollback(db)
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
            if isinstance(op, AppendMessage):
                op.state.committed = max(op.state.committed, op.message["seq"])
        del pending[:excess]
        self.written += excess
        if not self._lost:
            log.error("%s: more than %d changes waiting; dropping the oldest", self._path, excess)
        self._lost = True

    def _connect_writer(self) -> sqlite3.Connection:
        db = connect(self._path)
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
        self.orphans.append(db)
        self.reader_stale = True
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
                items.append(self.queue.get_nowait())
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
            rollback(db)
            if _unavailable(exc):
                raise _Unavailable(0, str(exc)) from None
        for index, op in enumerate(ops):
            try:
                self._write(db, [op])
            except Exception as exc:
                rollback(db)
                if _unavailable(exc):
                    raise _Unavailable(index, str(exc)) from None
                self._lost = True
                if isinstance(op, AppendMessage):
                    # Done with, as far as the tail is concerned: it may be trimmed past it.
                    op.state.committed = max(op.state.committed, op.message["seq"])
                log.error(
                    "%s refused one change (%s), dropped it: %s",
                    self._path,
                    type(op).__name__,
                    exc,
                )
        return len(ops)

    def _write(self, db: sqlite3.Connection, ops: list[Op]) -> None:
        if not ops:
            return
        batch = _Batch()
        db.execute("BEGIN")
        for op in ops:
            if isinstance(op, AppendMessage):
                batch.add_message(op.state, op.message, op.at)
            elif isinstance(op, SetReadMarker):
                batch.reads[op.room, op.subject] = op.seq
            else:
                batch.write(db)
                _write_op(db, op)
        batch.write(db)
        db.execute("COMMIT")
        for state, seq in batch.committed:
            state.committed = seq

    def retain(self, db: sqlite3.Connection) -> None:
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
                self.floors[name] = (epoch, floor)
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
        self.committed: list[tuple[RoomState, int]] = []

    def add_message(self, state: RoomState, message: Event, at: float) -> None:
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
    match op:
        case CreateRoom(room, epoch):
            db.execute(
                "INSERT OR REPLACE INTO rooms (name, epoch, seq) VALUES (?, ?, 0)", (room, epoch)
            )
        case SetOwner(room, subject):
            db.execute("UPDATE rooms SET owner = ? WHERE name = ?", (subject, room))
        case SetTopic(room, topic):
            db.execute("UPDATE rooms SET topic = ? WHERE name = ?", (topic, room))
        case DeleteRoom(room):
            for table, column in (("messages", "room"), ("reads", "room"), ("rooms", "name")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (room,))
        case SetName(subject, name, old_key, seen, chosen):
            db.execute(
                "INSERT INTO identities (subject, name, seen, chosen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (subject) DO UPDATE SET name = excluded.name, seen = excluded.seen,"
                " chosen = max(chosen, excluded.chosen)",
                (subject, name, seen, chosen),
            )
            if old_key is not None:
                db.execute("DELETE FROM names WHERE folded = ? AND subject = ?", (old_key, subject))
            db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name_key(name), subject))
        case SeeIdentity(subject, seen, chosen):
            db.execute(
                "UPDATE identities SET seen = ?, chosen = max(chosen, ?) WHERE subject = ?",
                (seen, chosen, subject),
            )
        case HoldDM(to, sender, event):
            db.execute(
                "INSERT INTO dms (recipient, sender, event) VALUES (?, ?, ?)",
                (to, sender, p.encode(event)),
            )
        case DropDMs(to, sender):
            db.execute("DELETE FROM dms WHERE recipient = ? AND sender = ?", (to, sender))
        case ForgetDMs(to, ids):
            for start in range(0, len(ids), ROWS_PER_STATEMENT):
                chunk = ids[start : start + ROWS_PER_STATEMENT]
                marks = ", ".join("?" * len(chunk))
                db.execute(
                    "DELETE FROM dms WHERE recipient = ?"
                    f" AND json_extract(event, '$.id') IN ({marks})",
                    [to, *chunk],
                )
        case SetConsent(a, b, state, requester):
            db.execute(
                "INSERT OR REPLACE INTO consent VALUES (?, ?, ?, ?)", (a, b, state, requester)
            )


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


def rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if db.in_transaction:
            db.execute("ROLLBACK")


def _insert(
    db: sqlite3.Connection, head: str, width: int, rows: Iterable[Sequence[Any]], tail: str
) -> None:
    rows = list(rows)
    group = "(" + ", ".join("?" * width) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = ", ".join([group] * len(chunk))
        db.execute(f"{head} {values} {tail}", [value for row in chunk for value in row])


def connect(path: Path) -> sqlite3.Connection:
    """A connection as both sides use it: WAL, and `name_key` for the names migration."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.create_function("name_key", 1, name_key, deterministic=True)
    db.execute("PRAGMA busy_timeout = 5000")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    return db
