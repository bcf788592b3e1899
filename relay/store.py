"""Where room history and identities live.

The hub talks to storage only through `Store`, so a durable backend can replace the in-memory
default without touching fan-out. Calls are synchronous and must not block: a backend that
writes to disk queues the write and does it off the event loop.
"""

from __future__ import annotations

import secrets
from abc import ABC, abstractmethod
from collections import deque

from relay.names import key
from shared.protocol import Event


class Store(ABC):
    """Per room: history (messages, epoch, seq), owner, topic, read markers. Per identity: name."""

    @abstractmethod
    def room(self, room: str) -> tuple[str, int]:
        """The room's history epoch and latest seq (0 for a room never written to).

        Looking at a room must not create it (anyone can ask over HTTP about any name); the
        epoch reported for a room not yet written becomes its epoch when it is.
        """

    @abstractmethod
    def append(self, room: str, message: Event) -> None:
        """Keep `message`, whose seq is the room's latest plus one."""

    @abstractmethod
    def after(self, room: str, seq: int) -> list[Event] | None:
        """Every kept message with a seq above `seq`; None when some of them are no longer kept."""

    @abstractmethod
    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        """Up to `limit` of the newest kept messages with a seq below `before`, oldest first."""

    @abstractmethod
    def delete_room(self, room: str) -> None:
        """Forget the room's history, owner, topic and read markers; its next use starts anew."""

    @abstractmethod
    def owner(self, room: str) -> str | None:
        """The subject of the identity that owns the room, if any."""

    @abstractmethod
    def set_owner(self, room: str, subject: str) -> None: ...

    @abstractmethod
    def topic(self, room: str) -> str | None: ...

    @abstractmethod
    def set_topic(self, room: str, topic: str) -> None: ...

    @abstractmethod
    def read_marker(self, room: str, subject: str) -> int:
        """The seq up to which the identity has read the room (0 when unknown)."""

    @abstractmethod
    def set_read_marker(self, room: str, subject: str, seq: int) -> None: ...

    @abstractmethod
    def subject_of(self, name: str) -> str | None:
        """The identity that holds `name` or a look-alike of it (see `relay.names.key`), if any."""

    @abstractmethod
    def hold_dm(self, to: str, sender: str, event: Event) -> None:
        """Keep a DM for identity `to` until it connects or accepts `sender`'s request."""

    @abstractmethod
    def held_dms(self, to: str) -> list[tuple[str, Event]]:
        """(sender subject, DM) for every DM kept for `to`, oldest first."""

    @abstractmethod
    def drop_dms(self, to: str, sender: str) -> None:
        """Forget the DMs kept for `to` from `sender` (delivered or declined)."""

    @abstractmethod
    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        """(state, requester) of the pair {a, b}: state is pending, accepted or declined."""

    @abstractmethod
    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None: ...

    def close(self) -> None:
        """Finish pending writes; the relay calls this once, after its last connection."""
        return None

    @abstractmethod
    def identity_name(self, subject: str) -> str | None:
        """The name an identity last had, if the store knows it."""

    @abstractmethod
    def set_identity_name(self, subject: str, name: str) -> None:
        """Remember the name an identity now has."""


class _Log:
    __slots__ = ("epoch", "messages", "owner", "reads", "seq", "topic")

    def __init__(self, limit: int) -> None:
        self.epoch = secrets.token_hex(6)
        self.seq = 0
        self.messages: deque[Event] = deque(maxlen=limit)
        self.owner: str | None = None
        self.topic: str | None = None
        self.reads: dict[str, int] = {}


class MemoryStore(Store):
    """The last `limit` messages of each room, kept until the process ends."""

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._logs: dict[str, _Log] = {}
        # Stands in for every room not yet created; becomes the next created room's log.
        self._unused = _Log(limit)
        self._names: dict[str, str] = {}
        self._subjects: dict[str, str] = {}
        self._dms: dict[str, list[tuple[str, Event]]] = {}
        self._consent: dict[frozenset[str], tuple[str, str]] = {}

    def _log(self, room: str) -> _Log:
        """The room's log, created on its first change."""
        log = self._logs.get(room)
        if log is None:
            # The epoch a lookup already reported for this room becomes the room's own.
            log = self._logs[room] = self._unused
            self._unused = _Log(self._limit)
        return log

    def _peek(self, room: str) -> _Log:
        """The room's log for reading: looking at a room does not create it."""
        return self._logs.get(room) or self._unused

    def room(self, room: str) -> tuple[str, int]:
        log = self._peek(room)
        return log.epoch, log.seq

    def append(self, room: str, message: Event) -> None:
        log = self._log(room)
        log.seq = message["seq"]
        log.messages.append(message)

    def after(self, room: str, seq: int) -> list[Event] | None:
        log = self._peek(room)
        if seq >= log.seq:
            return [] if seq == log.seq else None
        kept = log.messages
        if not kept or kept[0]["seq"] > seq + 1:
            return None
        start = len(kept) - (log.seq - seq)
        return [kept[i] for i in range(start, len(kept))]

    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        kept = self._peek(room).messages
        if not kept or limit <= 0:
            return []
        end = len(kept) if before is None else max(0, min(len(kept), before - kept[0]["seq"]))
        return [kept[i] for i in range(max(0, end - limit), end)]

    def delete_room(self, room: str) -> None:
        self._logs.pop(room, None)

    def owner(self, room: str) -> str | None:
        return self._peek(room).owner

    def set_owner(self, room: str, subject: str) -> None:
        self._log(room).owner = subject

    def topic(self, room: str) -> str | None:
        return self._peek(room).topic

    def set_topic(self, room: str, topic: str) -> None:
        self._log(room).topic = topic

    def read_marker(self, room: str, subject: str) -> int:
        return self._peek(room).reads.get(subject, 0)

    def set_read_marker(self, room: str, subject: str, seq: int) -> None:
        self._log(room).reads[subject] = seq

    def identity_name(self, subject: str) -> str | None:
        return self._names.get(subject)

    def set_identity_name(self, subject: str, name: str) -> None:
        old = self._names.get(subject)
        if old is not None and self._subjects.get(key(old)) == subject:
            del self._subjects[key(old)]
        self._names[subject] = name
        self._subjects[key(name)] = subject

    def subject_of(self, name: str) -> str | None:
        return self._subjects.get(key(name))

    def hold_dm(self, to: str, sender: str, event: Event) -> None:
        self._dms.setdefault(to, []).append((sender, event))

    def held_dms(self, to: str) -> list[tuple[str, Event]]:
        return list(self._dms.get(to, ()))

    def drop_dms(self, to: str, sender: str) -> None:
        kept = [held for held in self._dms.get(to, ()) if held[0] != sender]
        if kept:
            self._dms[to] = kept
        else:
            self._dms.pop(to, None)

    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        return self._consent.get(frozenset((a, b)))

    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None:
        self._consent[frozenset((a, b))] = (state, requester)
