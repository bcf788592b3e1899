"""The store's interfaces: one per concern, and `Store`, which a backend implements whole.

The hub talks to storage only through `Store`, so a durable or shared backend can replace the
in-memory default without touching fan-out. Calls are synchronous and must not block: a backend
that writes to disk queues the write and does it off the event loop.

The four concerns are split so each can be read, tested and reasoned about alone (what a room's
history promises does not depend on how names are kept); a backend still implements them in one
class, since some operations cross them (deleting a room forgets its owner and read markers).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from shared.protocol import Event


class MessageStore(ABC):
    """Per room: its history (messages numbered by seq) and the epoch those seqs belong to."""

    @abstractmethod
    def room(self, room: str) -> tuple[str, int]:
        """The room's history epoch and latest seq (0 for a room never written to).

        Looking at a room must not create it (anyone can ask over HTTP about any name); the
        epoch reported for a room not yet written becomes its epoch when it is.
        """

    @abstractmethod
    def add(self, room: str, message: Event, plain: str | None = None) -> Event:
        """Number `message` with the room's next seq and keep it, in one step; returns it.

        `plain` is its line for plain-text clients, for a backend that also publishes it.

        One step, because a backend shared by several relays must hand out each seq once: the
        number and the append cannot be two calls that another relay's message falls between.
        """

    @abstractmethod
    def append(self, room: str, message: Event) -> None:
        """Keep `message`, whose seq is the room's latest plus one (tests and restores)."""

    @abstractmethod
    def after(self, room: str, seq: int) -> list[Event] | None:
        """Every kept message with a seq above `seq`; None when some of them are no longer kept."""

    @abstractmethod
    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        """Up to `limit` of the newest kept messages with a seq below `before`, oldest first."""

    @abstractmethod
    def delete_room(self, room: str) -> None:
        """Forget the room's history, owner, topic and read markers; its next use starts anew."""

    def release(self, room: str) -> None:
        """The room's last member left: forget it if it has nothing worth keeping.

        A room with no messages and no topic is only a name; thousands joined once and left
        must not stay for good. Its next use starts it anew (with a new owner).
        """
        return None


class RoomStore(ABC):
    """Per room: who owns it, its topic, and how far each identity has read it.

    Read markers live here rather than with DMs: they belong to a room and go with it when it
    is deleted, and every backend keeps them next to the room's other state.
    """

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


class IdentityStore(ABC):
    """Per identity (subject): the name it has; per name: the one identity that holds it."""

    @abstractmethod
    def identity_name(self, subject: str) -> str | None:
        """The name an identity last had, if the store knows it."""

    @abstractmethod
    def set_identity_name(self, subject: str, name: str, chosen: bool = False) -> None:
        """Remember the name an identity has now (`chosen`: it picked it), and that it was seen.

        Identities that never picked a name, own no room, have no DMs waiting and were not
        seen for `forget_days` are forgotten, so one-off connections do not stay for good.
        """

    @abstractmethod
    def subject_of(self, name: str) -> str | None:
        """The identity that holds `name` or a look-alike of it (see `relay.names.key`), if any."""

    def claim_name(self, subject: str, name: str, holder: str | None) -> bool:
        """Give `subject` the name it chose, if the name is still `holder`'s (None: nobody's).

        The caller decided from `subject_of` that `name` may be taken; this refuses when it
        changed since. One step in a store shared by several relays, so that two of them
        cannot both give one name away; in a store of one relay, the hub is that step.
        """
        current = self.subject_of(name)
        if current is not None and current not in (holder, subject):
            return False
        self.set_identity_name(subject, name, chosen=True)
        return True


class MailboxStore(ABC):
    """Per identity: DMs held until it can take them; per pair of identities: DM consent."""

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
    def forget_dms(self, to: str, ids: list[str]) -> None:
        """Forget the DMs kept for `to` with these ids (written to the recipient's socket)."""

    @abstractmethod
    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        """(state, requester) of the pair {a, b}: state is pending, accepted or declined."""

    @abstractmethod
    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None: ...


class Store(MessageStore, RoomStore, IdentityStore, MailboxStore):
    """Everything the relay keeps, in one backend, and whether that backend can keep it now."""

    def close(self) -> None:
        """Finish pending writes; the relay calls this once, after its last connection."""
        return None

    def problem(self) -> str | None:
        """Why the store cannot keep changes now, or None while it can.

        The relay then refuses what it would have to keep (messages, held DMs, topics) rather
        than acknowledge what may be lost; what it acknowledged before is kept and retried.
        """
        return None

    def counters(self) -> tuple[int, int]:
        """(failed write attempts so far, changes waiting to be written) for /metrics."""
        return 0, 0


def seq_key(message: Event) -> int:
    """Positions in a tail come from seqs by search, never by arithmetic: seqs can have gaps.

    A message the database could not keep, or one lost in a crash, leaves a hole in the seqs
    that survive; counting back from the latest seq would then land on the wrong message.
    """
    seq: int = message["seq"]
    return seq


class StoreUnavailable(Exception):
    """The store cannot be reached now (a shared store's server is down): refuse, do not wait."""
