"""The in-memory store: the default, kept until the process ends."""

from __future__ import annotations

import secrets
import time
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable

from relay.names import key
from relay.store.base import Store, seq_key
from shared.protocol import Event

# MemoryStore's bounds over all rooms together (see its docstring).
ROOMS_MAX = 10_000
BUDGET = 200_000


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
    """The last `limit` messages of each room, kept until the process ends.

    All rooms together keep at most `rooms` rooms and `budget` messages: beyond that the least
    recently used room is forgotten whole (its next use starts a new epoch, as after a restart),
    so many rooms used once cannot hold memory for good.
    """

    def __init__(
        self,
        limit: int = 1000,
        rooms: int = ROOMS_MAX,
        budget: int = BUDGET,
        forget_days: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._limit = limit
        self._forget_seconds = forget_days * 86400.0
        self._clock = clock
        # Identities by when they were last seen, least recently first; those that chose a name.
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._chosen: set[str] = set()
        self._rooms_max = rooms
        self._budget = max(budget, limit)
        self._total = 0
        self._logs: OrderedDict[str, _Log] = OrderedDict()
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
            self._evict()
        else:
            self._logs.move_to_end(room)
        return log

    def _peek(self, room: str) -> _Log:
        """The room's log for reading: looking at a room does not create it."""
        log = self._logs.get(room)
        if log is None:
            return self._unused
        self._logs.move_to_end(room)
        return log

    def _evict(self) -> None:
        logs = self._logs
        while len(logs) > 1 and (len(logs) > self._rooms_max or self._total > self._budget):
            self._total -= len(logs.popitem(last=False)[1].messages)

    def room(self, room: str) -> tuple[str, int]:
        log = self._peek(room)
        return log.epoch, log.seq

    def add(self, room: str, message: Event) -> Event:
        message["seq"] = self._peek(room).seq + 1
        self.append(room, message)
        return message

    def append(self, room: str, message: Event) -> None:
        log = self._log(room)
        log.seq = message["seq"]
        if len(log.messages) < self._limit:
            self._total += 1
        log.messages.append(message)
        if self._total > self._budget:
            self._evict()

    def after(self, room: str, seq: int) -> list[Event] | None:
        log = self._peek(room)
        if seq >= log.seq:
            return [] if seq == log.seq else None
        kept = log.messages
        if not kept or kept[0]["seq"] > seq + 1:
            return None
        start = bisect_right(kept, seq, key=seq_key)
        return [kept[i] for i in range(start, len(kept))]

    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        kept = self._peek(room).messages
        if not kept or limit <= 0:
            return []
        end = len(kept) if before is None else bisect_left(kept, before, key=seq_key)
        return [kept[i] for i in range(max(0, end - limit), end)]

    def delete_room(self, room: str) -> None:
        log = self._logs.pop(room, None)
        if log is not None:
            self._total -= len(log.messages)

    def release(self, room: str) -> None:
        log = self._logs.get(room)
        if log is not None and not log.seq and log.topic is None:
            del self._logs[room]

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

    def set_identity_name(self, subject: str, name: str, chosen: bool = False) -> None:
        now = self._clock()
        self._seen[subject] = now
        self._seen.move_to_end(subject)
        if chosen:
            self._chosen.add(subject)
        self._forget_idle(now)
        old = self._names.get(subject)
        if old is not None and self._subjects.get(key(old)) == subject:
            del self._subjects[key(old)]
        self._names[subject] = name
        self._subjects[key(name)] = subject

    def subject_of(self, name: str) -> str | None:
        return self._subjects.get(key(name))

    def _forget_idle(self, now: float) -> None:
        """Forget anonymous identities not seen for `forget_days` (oldest first, stops early)."""
        if not self._forget_seconds:
            return
        seen, gone = self._seen, set()
        owners: set[str | None] | None = None
        while seen:
            subject, at = next(iter(seen.items()))
            if now - at <= self._forget_seconds:
                break
            del seen[subject]
            if owners is None:
                owners = {log.owner for log in self._logs.values()}
            if subject in self._chosen or subject in self._dms or subject in owners:
                continue
            gone.add(subject)
            name = self._names.pop(subject, None)
            if name is not None and self._subjects.get(key(name)) == subject:
                del self._subjects[key(name)]
            for log in self._logs.values():
                log.reads.pop(subject, None)
        if gone:
            self._consent = {pair: v for pair, v in self._consent.items() if not pair & gone}

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

    def forget_dms(self, to: str, ids: list[str]) -> None:
        gone = set(ids)
        kept = [held for held in self._dms.get(to, ()) if held[1]["id"] not in gone]
        if kept:
            self._dms[to] = kept
        else:
            self._dms.pop(to, None)

    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        return self._consent.get(frozenset((a, b)))

    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None:
        self._consent[frozenset((a, b))] = (state, requester)
