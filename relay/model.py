"""The hub's vocabulary: limits, connections, identities, rooms, and events on their way out.

Plain data shared by the hub (relay.core) and its collaborators (relay.identities, relay.dms,
relay.owners, relay.remote), so none of them has to import another to name what they pass
around; and the refusal they all raise for the hub to answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relay.ratelimit import TokenBucket
from shared import protocol as p
from shared.protocol import Event

STORE_DOWN = "the relay cannot store messages right now; try again later"


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 4096
    rate: float = 5.0
    burst: int = 20
    flood_strikes: int = 50
    history: int = 1000
    backlog: int = 50
    max_frame_bytes: int = 65536
    send_queue_bytes: int = 1 << 20
    # Per client address, over all its connections and HTTP posts; None: 10x the identity's.
    address_rate: float | None = None
    address_burst: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "max_message_bytes": self.max_message_bytes,
            "max_frame_bytes": self.max_frame_bytes,
            "rate_per_second": self.rate,
            "rate_burst": self.burst,
            "history": self.history,
            "history_page_max": p.HISTORY_PAGE_MAX,
        }


class Outgoing:
    """An event on its way to many clients, encoded at most once per protocol."""

    __slots__ = ("_json", "data", "frame", "plain")

    def __init__(self, data: Event, plain: str | None, encoded: str | None = None) -> None:
        self.data = data
        self.plain = plain
        # Given when the event arrived already encoded (from another node): never encoded again.
        self._json: str | None = encoded
        # For the WebSocket layer: the plain line as a ready-made frame, built for the first
        # recipient that can take it and reused for the rest.
        self.frame: bytes | None = None

    @property
    def json(self) -> str:
        encoded = self._json
        if encoded is None:
            encoded = self._json = p.encode(self.data)
        return encoded


class Client:
    """One connection as the hub sees it; the WebSocket layer supplies delivery and closing."""

    __slots__ = ("address", "generation", "json", "room", "strikes", "user")

    def __init__(self, json: bool, address: str = "") -> None:
        self.json = json
        # The peer's IP address, for the per-address rate limit ("" when unknown).
        self.address = address
        self.user: User | None = None
        self.room: Room | None = None
        self.strikes = 0
        # The identity's token generation when this connection was admitted: a higher one in
        # accounts.db later means its tokens were revoked by another process.
        self.generation = 0

    def deliver(self, event: Outgoing) -> bool:
        """Queue `event` without blocking; False when the client is too far behind to keep."""
        raise NotImplementedError

    def close(self, code: int, reason: str, flush: bool) -> None:
        """Close after sending what is queued (`flush`) or at once, dropping it."""
        raise NotImplementedError

    def preload(self, events: list[Outgoing]) -> None:
        """Queue a joiner's welcome and replay, which must not count as falling behind.

        A resume can replay the whole kept history at once; counted against the send queue's
        budget it would drop the joiner as a slow consumer before it could read anything.
        """
        for event in events:
            self.deliver(event)

    def when_written(self, callback: Callable[[], None]) -> None:
        """Call `callback` once everything queued so far has been written to the socket."""
        callback()


class User:
    """An identity with at least one open connection; all its connections share one name.

    And one rate budget: fifty connections on one token get the rate of one.
    """

    __slots__ = ("bucket", "cids", "clients", "name", "subject")

    def __init__(self, subject: str, name: str, bucket: TokenBucket) -> None:
        self.subject = subject
        self.name = name
        self.bucket = bucket
        self.clients: set[Client] = set()
        self.cids: dict[str, tuple[float, Event]] = {}


class Room:
    """Live state of a room: exists while it has members. Its history lives in the store."""

    __slots__ = ("clients", "epoch", "name", "seq", "told", "users")

    def __init__(self, name: str, epoch: str = "", seq: int = 0) -> None:
        self.name = name
        self.clients: dict[Client, None] = {}
        self.users: dict[User, int] = {}
        # With an ordering backplane: the history epoch, and the last seq handed to members.
        self.epoch = epoch
        self.seq = seq
        # With a backplane, until the node hears the room: who was in it on other nodes when
        # it started listening (joins and leaves before that reached nobody here).
        self.told: set[str] | None = None

    def member_names(self, also: User | None = None) -> list[str]:
        names = [user.name for user in self.users]
        if also is not None and also not in self.users:
            names.append(also.name)
        names.sort()
        return names


class Refused(Exception):
    """A request the relay will not carry out; answered with an error event of `code`.

    Raised by the hub's collaborators, which do not send events themselves: the hub's request
    dispatch turns it into the error reply, naming the request it answers.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class BadRequest(Refused):
    """A request whose fields have the wrong shape; answered with `error bad_request`."""

    def __init__(self, detail: str) -> None:
        super().__init__(p.BAD_REQUEST, detail)


def text_field(request: Event, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str):
        raise BadRequest(f"'{field}' must be a string")
    return value


def text_problem(text: str, limit: int, allow_empty: bool = False) -> tuple[str, str] | None:
    """(code, detail) when `text` cannot be posted: not text, blank, or over `limit` bytes."""
    problem = p.text_error(text)
    if problem is not None:
        return p.BAD_TEXT, problem
    if not allow_empty and not text.strip():
        return p.EMPTY, "message text is empty"
    if len(text) * 4 > limit and len(text.encode()) > limit:
        return p.TOO_LARGE, f"message is longer than {limit} bytes"
    return None


def plain(prefix: str, text: str, first: str = "") -> str:
    """The plain form of user text: every line starts with `prefix`, naming who wrote it.

    Without it, a newline in the text would let its author show plain clients a line that
    seems to come from someone else, or from the relay. Built once per event.
    """
    if "\n" in text:
        text = text.replace("\n", "\n" + prefix)
    return prefix + first + text
