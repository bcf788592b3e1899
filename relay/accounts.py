"""Registered names: password hashes, token generations, login throttling; invite-only rooms.

Kept apart from the chat store in a small SQLite database of its own (`STATE_DIR/accounts.db`,
or in memory with `--db :memory:`): it changes only when someone registers, logs out everywhere
or an admin revokes tokens, so it is written synchronously, and `chat-relay tokens revoke` can
change it while the relay runs. Lookups are primary-key reads, done when a connection logs in
or someone picks a name, never per message. Several relays as one (`--redis`) keep the same
records in Redis instead (relay/redis_registry.py), behind the same `Registry` interface.

Passwords are hashed with scrypt, a memory-hard KDF, and compared in constant time. The hash
costs about as much as a login is allowed to (tens of milliseconds), so the relay runs it on a
worker thread; an unknown name is checked against a dummy hash so that it costs the same as a
wrong password, and tells nothing about which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from relay.names import key
from relay.ratelimit import TokenBucket

PASSWORD_MIN = 8
PASSWORD_MAX = 1024
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
# Login attempts: a burst of 5, then one every 12 s, per name and per client address.
LOGIN_RATE, LOGIN_BURST = 1 / 12, 5
THROTTLE_KEEP = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    subject TEXT PRIMARY KEY, name TEXT NOT NULL, namekey TEXT NOT NULL UNIQUE,
    salt BLOB NOT NULL, hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS generations (
    subject TEXT PRIMARY KEY, generation INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS private_rooms (room TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS members (
    room TEXT NOT NULL, subject TEXT NOT NULL, PRIMARY KEY (room, subject)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Account:
    subject: str
    name: str
    salt: bytes
    hash: bytes


def password_problem(password: str) -> str | None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"password must be {PASSWORD_MIN}-{PASSWORD_MAX} characters"
    return None


def hash_password(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
    )


_DUMMY = Account("", "", b"\0" * 16, b"\0" * 32)


def check_password(account: Account | None, password: str) -> bool:
    """Whether `password` is the account's; the same work whether or not the account exists."""
    target = account or _DUMMY
    digest = hash_password(password, target.salt)
    return hmac.compare_digest(digest, target.hash) and account is not None


def new_account(subject: str, name: str, password: str) -> Account:
    salt = secrets.token_bytes(16)
    return Account(subject, name, salt, hash_password(password, salt))


class NameTaken(Exception):
    """Another account has the name (or a look-alike) or the identity: two registrations raced."""


class Registry(ABC):
    """Accounts, token generations and invite-only rooms: what every node must agree on.

    SQLite for one relay; Redis (relay/redis_registry.py) for several relays as one. Every
    method is a short blocking call made when someone logs in, registers, joins or changes a
    room, never per message.
    """

    # What a backend raises when it cannot be read right now (a busy file, Redis away): the
    # revocation watcher logs these and tries again at its next tick.
    unavailable: tuple[type[Exception], ...] = ()

    def problem(self) -> str | None:
        """Why the accounts cannot be read right now (a shared registry's server is down)."""
        return None

    @abstractmethod
    def changed_elsewhere(self) -> bool:
        """Whether another process revoked tokens since last asked (see Hub.cut_revoked)."""

    @abstractmethod
    def account(self, subject: str) -> Account | None: ...

    @abstractmethod
    def account_named(self, name: str) -> Account | None:
        """The account whose name is `name` or looks like it."""

    @abstractmethod
    def add(self, account: Account) -> None:
        """Keep a new account; NameTaken if its name or identity already has one."""

    @abstractmethod
    def generation(self, subject: str) -> int: ...

    @abstractmethod
    def revoke(self, subject: str) -> int:
        """Refuse every token issued so far for `subject`; the new generation."""

    @abstractmethod
    def is_private(self, room: str) -> bool: ...

    @abstractmethod
    def set_private(self, room: str, private: bool, members: set[str]) -> None:
        """Make the room invite-only with `members` in it, or open it (forgetting members)."""

    @abstractmethod
    def is_member(self, room: str, subject: str) -> bool: ...

    @abstractmethod
    def add_member(self, room: str, subject: str) -> None: ...

    @abstractmethod
    def remove_member(self, room: str, subject: str) -> None: ...

    @abstractmethod
    def readable(self, rooms: list[str], subject: str | None) -> set[str]:
        """Which of `rooms` `subject` may see: the open ones and the private ones it is in."""

    @abstractmethod
    def close(self) -> None: ...


class SQLiteRegistry(Registry):
    """Accounts and token generations in SQLite (a file, or memory when `path` is None)."""

    unavailable = (sqlite3.Error,)

    def __init__(self, path: Path | None) -> None:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(
            ":memory:" if path is None else path, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA busy_timeout = 5000")
        if path is not None:
            self.db.execute("PRAGMA journal_mode = WAL")
        self.db.executescript(SCHEMA)
        self._data_version = self._version()

    def _version(self) -> int:
        return int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def changed_elsewhere(self) -> bool:
        """Whether another connection (`chat-relay tokens revoke`) committed since last asked.

        SQLite's data_version moves only for other connections' commits, so this costs one
        pragma and no reads while nobody else writes.
        """
        version = self._version()
        changed, self._data_version = version != self._data_version, version
        return changed

    def account(self, subject: str) -> Account | None:
        row = self.db.execute(
            "SELECT subject, name, salt, hash FROM accounts WHERE subject = ?", (subject,)
        ).fetchone()
        return None if row is None else Account(*row)

    def account_named(self, name: str) -> Account | None:
        """The account whose name is `name` or looks like it."""
        row = self.db.execute(
            "SELECT subject, name, salt, hash FROM accounts WHERE namekey = ?", (key(name),)
        ).fetchone()
        return None if row is None else Account(*row)

    def add(self, account: Account) -> None:
        try:
            self.db.execute(
                "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
                (account.subject, account.name, key(account.name), account.salt, account.hash),
            )
        except sqlite3.IntegrityError as error:
            raise NameTaken(account.name) from error

    def generation(self, subject: str) -> int:
        row = self.db.execute(
            "SELECT generation FROM generations WHERE subject = ?", (subject,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def revoke(self, subject: str) -> int:
        """Refuse every token issued so far for `subject`; the new generation."""
        generation = self.generation(subject) + 1
        self.db.execute("INSERT OR REPLACE INTO generations VALUES (?, ?)", (subject, generation))
        return generation

    # -- invite-only rooms: who may be in them, kept with the accounts since it is as rare to
    # change and as important to keep

    def is_private(self, room: str) -> bool:
        row = self.db.execute("SELECT 1 FROM private_rooms WHERE room = ?", (room,)).fetchone()
        return row is not None

    def set_private(self, room: str, private: bool, members: set[str]) -> None:
        """Make the room invite-only with `members` in it, or open it (forgetting members)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM members WHERE room = ?", (room,))
            self.db.execute("DELETE FROM private_rooms WHERE room = ?", (room,))
            if private:
                self.db.execute("INSERT INTO private_rooms VALUES (?)", (room,))
                self.db.executemany(
                    "INSERT INTO members VALUES (?, ?)", [(room, subject) for subject in members]
                )

    def is_member(self, room: str, subject: str) -> bool:
        row = self.db.execute(
            "SELECT 1 FROM members WHERE room = ? AND subject = ?", (room, subject)
        ).fetchone()
        return row is not None

    def add_member(self, room: str, subject: str) -> None:
        self.db.execute("INSERT OR IGNORE INTO members VALUES (?, ?)", (room, subject))

    def remove_member(self, room: str, subject: str) -> None:
        self.db.execute("DELETE FROM members WHERE room = ? AND subject = ?", (room, subject))

    def readable(self, rooms: list[str], subject: str | None) -> set[str]:
        """Which of `rooms` `subject` may see: the open ones and the private ones it is in."""
        listed = set(rooms)
        private = {room for (room,) in self.db.execute("SELECT room FROM private_rooms")}
        hidden = private & listed
        if subject is not None and hidden:
            query = "SELECT room FROM members WHERE subject = ?"
            hidden -= {room for (room,) in self.db.execute(query, (subject,))}
        return listed - hidden

    def close(self) -> None:
        self.db.close()


class LoginThrottle:
    """Token buckets per name and per address, the oldest forgotten beyond THROTTLE_KEEP."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, name: str, address: str, now: float) -> bool:
        # Both buckets pay, so neither many names from one address nor many addresses
        # against one name get more than the allowance.
        allowed = True
        for bucket_key in (f"n:{key(name)}", f"a:{address}"):
            bucket = self._buckets.pop(bucket_key, None)
            if bucket is None:
                bucket = TokenBucket(LOGIN_RATE, LOGIN_BURST, now)
            self._buckets[bucket_key] = bucket
            allowed = bucket.take(now) and allowed
        while len(self._buckets) > THROTTLE_KEEP:
            self._buckets.popitem(last=False)
        return allowed
