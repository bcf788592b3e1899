"""The relay's core: users, rooms, fan-out, history. Plain Python, no sockets.

The hub is driven by the WebSocket layer (or by tests) through `join`, `receive`, `leave` and
`post`, and talks back through `Client.deliver`. Every hub method runs to completion without
awaiting, which is what makes ordering simple: an event is in every member's queue before the
next frame is looked at, and a joiner's welcome and replay are queued before it can see any
live event, so replay and live stream meet without a gap or a duplicate.
"""

from __future__ import annotations

import itertools
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from coolname import generate_slug

from relay.metrics import Metrics
from relay.ratelimit import TokenBucket
from relay.store import Store
from relay.tokens import TokenSigner, new_subject
from shared import protocol as p
from shared.protocol import Event

log = logging.getLogger("relay.core")

CID_MAX = 64
READ_COST = 0.2  # of a message's rate budget
CID_TTL = 300.0
CID_KEEP = 256

# DM consent between two identities, kept in the store.
PENDING = "pending"
ACCEPTED = "accepted"
DECLINED = "declined"


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

    def __init__(self, data: Event, plain: str | None) -> None:
        self.data = data
        self.plain = plain
        self._json: str | None = None
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

    __slots__ = ("address", "json", "room", "strikes", "user")

    def __init__(self, json: bool, address: str = "") -> None:
        self.json = json
        # The peer's IP address, for the per-address rate limit ("" when unknown).
        self.address = address
        self.user: User | None = None
        self.room: Room | None = None
        self.strikes = 0

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

    __slots__ = ("clients", "name", "users")

    def __init__(self, name: str) -> None:
        self.name = name
        self.clients: dict[Client, None] = {}
        self.users: dict[User, int] = {}

    def member_names(self, also: User | None = None) -> list[str]:
        names = [user.name for user in self.users]
        if also is not None and also not in self.users:
            names.append(also.name)
        names.sort()
        return names


class Hub:
    def __init__(
        self,
        store: Store,
        signer: TokenSigner,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.signer = signer
        self.limits = limits or Limits()
        self.clock = clock
        self.metrics = Metrics()
        self.rooms: dict[str, Room] = {}
        self.clients: set[Client] = set()
        self._users: dict[str, User] = {}
        self._names: dict[str, User] = {}
        self._answering: dict[str, str] = {}
        self._parked_cids: dict[str, tuple[float, dict[str, tuple[float, Event]]]] = {}
        self._ids = itertools.count(1)
        limits = self.limits
        self._address_rate = (
            limits.rate * 10 if limits.address_rate is None else limits.address_rate
        )
        self._address_burst = (
            limits.burst * 10 if limits.address_burst is None else limits.address_burst
        )
        self._addresses: dict[str, TokenBucket] = {}
        self._addresses_pruned_at = 0
        self._id_prefix = secrets.token_hex(4)

    # -- connections --------------------------------------------------------------------------

    def join(
        self,
        client: Client,
        room_name: str,
        token: str | None = None,
        backlog: int | None = None,
        since: int | None = None,
        epoch: str | None = None,
    ) -> None:
        """Admit `client` to a room: welcome and replay (JSON) first, then the live stream."""
        user = self._login(token)
        room = self.rooms.get(room_name)
        if room is None:
            room = self.rooms[room_name] = Room(room_name)
            if self.store.owner(room_name) is None:
                self.store.set_owner(room_name, user.subject)
        client.user = user
        client.room = room
        self.clients.add(client)
        self.metrics.connections_total += 1
        if client.json:
            self._welcome(client, room, backlog, since, epoch)
        self._deliver_waiting(client, first=not user.clients)
        user.clients.add(client)
        room.clients[client] = None
        count = room.users.get(user, 0)
        room.users[user] = count + 1
        joined = Outgoing(
            {"type": "join", "room": room.name, "name": user.name, "ts": p.now_rfc3339()},
            f"{user.name} :: joined the chat",
        )
        if count == 0:
            self._fanout(room, joined)
        else:
            # The user is already here on another device: no announcement, but this
            # connection still learns its own name the way a plain client expects.
            self._send(client, joined)

    def _welcome(
        self,
        client: Client,
        room: Room,
        backlog: int | None,
        since: int | None,
        epoch: str | None,
    ) -> None:
        assert client.user is not None
        user = client.user
        epoch_now, seq = self.store.room(room.name)
        welcome: Event = {
            "type": "welcome",
            "room": room.name,
            "you": user.name,
            "token": self.signer.issue(user.subject, user.name),
            "members": room.member_names(also=user),
            "seq": seq,
            "epoch": epoch_now,
            "limits": self.limits.describe(),
            "owner": self.owner_name(room.name),
            "topic": self.store.topic(room.name),
            "read": self.store.read_marker(room.name, user.subject),
        }
        count = self.limits.backlog if backlog is None else max(0, backlog)
        replay: list[Event] | None = None
        if since is not None:
            if epoch == epoch_now:
                replay = self.store.after(room.name, since)
            welcome["recovered"] = replay is not None
        if replay is None:
            replay = self.store.before(room.name, None, count)
        welcome["replay"] = len(replay)
        events = [Outgoing(welcome, None)]
        events += [Outgoing({**message, "replay": True}, None) for message in replay]
        client.preload(events)

    def _login(self, token: str | None) -> User:
        claims = self.signer.verify(token) if token else None
        if claims is not None:
            subject, token_name = claims
            user = self._users.get(subject)
            if user is not None:
                return user
            name = self.store.identity_name(subject) or token_name
            if self._names.get(name.casefold()) is not None:
                name = self._fresh_name()
        else:
            subject, name = new_subject(), self._fresh_name()
        user = User(subject, name, TokenBucket(self.limits.rate, self.limits.burst, self.clock()))
        parked = self._parked_cids.pop(subject, None)
        if parked is not None:
            user.cids = parked[1]
        self._users[subject] = user
        self._names[name.casefold()] = user
        self.store.set_identity_name(subject, name)
        return user

    def _fresh_name(self) -> str:
        while True:
            name = generate_slug(2)
            if len(name) <= p.NAME_MAX and name.casefold() not in self._names:
                return name

    def leave(self, client: Client) -> None:
        """Forget `client`; the user leaves the room with its last connection there."""
        room, user = client.room, client.user
        if room is None or user is None:
            return
        client.room = None
        self.clients.discard(client)
        room.clients.pop(client, None)
        user.clients.discard(client)
        count = room.users.get(user, 0) - 1
        if count > 0:
            room.users[user] = count
        else:
            room.users.pop(user, None)
            if room.clients:
                ts = p.now_rfc3339()
                left = {"type": "leave", "room": room.name, "name": user.name, "ts": ts}
                self._fanout(room, Outgoing(left, f"{user.name} :: left the chat"))
        if not room.clients and self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        self._logout_if_gone(user)

    def _logout_if_gone(self, user: User) -> None:
        if user.clients:
            return
        self._users.pop(user.subject, None)
        if self._names.get(user.name.casefold()) is user:
            del self._names[user.name.casefold()]
        # A client that lost its only connection retries with the same cids after it comes
        # back: keep them for the dedupe window. Parked in logout order, so expiry is a pop
        # from the front.
        now = self.clock()
        if user.cids:
            self._parked_cids[user.subject] = (now, user.cids)
        while self._parked_cids:
            subject, (parked_at, _) = next(iter(self._parked_cids.items()))
            if now - parked_at <= CID_TTL:
                break
            del self._parked_cids[subject]

    # -- frames from clients ------------------------------------------------------------------

    def receive(self, client: Client, text: str) -> None:
        """Handle one text frame: every hub state change starts here, so none interleave."""
        if client.room is None:
            return
        if not client.json:
            if self._admit(client):
                self._say(client, text, None)
            return
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        kind = request.get("type") if isinstance(request, dict) else None
        # Read markers are cheap, not free: a client sends them on its own, so five of them cost
        # what one message does, and a refused one is dropped without an error event (it would
        # look like a refusal of the user's last message); it still counts toward a flood.
        if kind == "read" and _is_int(request.get("seq")):
            if not self._admit(client, READ_COST, quiet=True):
                return
        elif not self._admit(client):
            return
        if not isinstance(request, dict):
            self._error(client, p.BAD_JSON, "frame must be a JSON object")
            return
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self._error(client, p.UNKNOWN_TYPE, f"unknown type {kind!r}"[:200])
            return
        # Errors name the request they answer, so a client can tell which of several it was.
        self._answering = {"request": kind}
        if isinstance(request.get("cid"), str):
            self._answering["cid"] = request["cid"]
        try:
            handler(self, client, request)
        except _BadRequest as bad:
            self._error(client, p.BAD_REQUEST, str(bad))
        finally:
            self._answering = {}

    def receive_binary(self, client: Client) -> None:
        if client.room is not None and self._admit(client):
            self._error(client, p.BAD_FRAME, "binary frames are not supported; send text")

    def _admit(self, client: Client, cost: float = 1.0, quiet: bool = False) -> bool:
        """Charge one inbound frame to its identity and its address; False when refused.

        O(1): two bucket updates and one dictionary lookup, whatever the frame.
        """
        assert client.user is not None
        now = self.clock()
        if client.user.bucket.take(now, cost) and self._address_take(client.address, now, cost):
            client.strikes = 0
            return True
        client.strikes += 1
        if client.strikes > self.limits.flood_strikes:
            self.metrics.floods += 1
            self.leave(client)
            client.close(p.CLOSE_POLICY, "flood: too many messages", flush=True)
        elif not quiet:
            self._error(client, p.RATE_LIMITED, "too many messages; slow down")
        return False

    def _address_take(self, address: str, now: float, cost: float = 1.0) -> bool:
        """Charge the client address's bucket, shared by its connections and HTTP posts."""
        if self._address_rate <= 0 or not address:
            return True
        bucket = self._addresses.get(address)
        if bucket is None:
            bucket = self._addresses[address] = TokenBucket(
                self._address_rate, self._address_burst, now
            )
            # Forget refilled buckets whenever the table has doubled: O(1) amortised per frame.
            if len(self._addresses) > 2 * self._addresses_pruned_at + 64:
                for key in [key for key, value in self._addresses.items() if value.full(now)]:
                    if key != address:
                        del self._addresses[key]
                self._addresses_pruned_at = len(self._addresses)
        return bucket.take(now, cost)

    def _on_say(self, client: Client, request: Event) -> None:
        cid = request.get("cid")
        if cid is not None and not (isinstance(cid, str) and 0 < len(cid) <= CID_MAX):
            raise _BadRequest(f"'cid' must be a string of 1-{CID_MAX} characters")
        self._say(client, _text(request, "text"), cid)

    def _say(self, client: Client, text: str, cid: str | None) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        if not self._text_ok(client, text):
            return
        if cid is not None:
            sent = self._recent_cid(user, cid)
            if sent is not None:
                self._send(client, Outgoing(sent, None))
                return
        message = self._message(room.name, user.name, text, cid=cid)
        if cid is not None:
            user.cids[cid] = (self.clock(), message)
        self._fanout(room, Outgoing(message, f"{user.name} :: {text}"))

    def _message(self, room: str, sender: str, text: str, **extra: str | None) -> Event:
        """A new room message, numbered and kept in the room's history; None extras are left out."""
        message: Event = {
            "type": "message",
            "room": room,
            "id": self._next_id(),
            "seq": self.store.room(room)[1] + 1,
            "ts": p.now_rfc3339(),
            "from": sender,
            "text": text,
        }
        message.update((key, value) for key, value in extra.items() if value is not None)
        self.store.append(room, message)
        self.metrics.messages_in += 1
        return message

    def _recent_cid(self, user: User, cid: str) -> Event | None:
        now = self.clock()
        if len(user.cids) > CID_KEEP:
            for key in [key for key, (at, _) in user.cids.items() if now - at > CID_TTL]:
                del user.cids[key]
            while len(user.cids) > CID_KEEP:
                del user.cids[next(iter(user.cids))]
        seen = user.cids.get(cid)
        return seen[1] if seen is not None and now - seen[0] <= CID_TTL else None

    def _text_ok(self, client: Client, text: str, allow_empty: bool = False) -> bool:
        problem = self._text_problem(text, allow_empty)
        if problem is not None:
            self._error(client, *problem)
        return problem is None

    def _text_problem(self, text: str, allow_empty: bool = False) -> tuple[str, str] | None:
        """(code, detail) when `text` cannot be posted: blank, or over the size limit."""
        limit = self.limits.max_message_bytes
        if not allow_empty and not text.strip():
            return p.EMPTY, "message text is empty"
        if len(text) * 4 > limit and len(text.encode()) > limit:
            return p.TOO_LARGE, f"message is longer than {limit} bytes"
        return None

    def _on_nick(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        new = _text(request, "name")
        problem = p.name_error(new)
        if problem is not None:
            self._error(client, p.BAD_NAME, problem)
            return
        holder = self._names.get(new.casefold())
        if holder is not None and holder is not user:
            self._error(client, p.NAME_TAKEN, f"{new} is already taken")
            return
        old = user.name
        if new == old:
            return
        del self._names[old.casefold()]
        self._names[new.casefold()] = user
        user.name = new
        self.store.set_identity_name(user.subject, new)
        ts = p.now_rfc3339()
        for room in {c.room for c in list(user.clients) if c.room is not None}:
            event = {"type": "nick", "room": room.name, "old": old, "new": new, "ts": ts}
            self._fanout(room, Outgoing(event, f"{old} :: is now known as {new}"))

    def _on_dm(self, client: Client, request: Event) -> None:
        sender = client.user
        assert sender is not None
        to, text = _text(request, "to"), _text(request, "text")
        subject = self._subject_of(to)
        if subject is None:
            self._error(client, p.NO_SUCH_USER, f"nobody has ever been called {to}")
            return
        if not self._text_ok(client, text):
            return
        recipient = self._users.get(subject)
        event = {
            "type": "dm",
            "id": self._next_id(),
            "ts": p.now_rfc3339(),
            "from": sender.name,
            "to": self._name_of(subject),
            "text": text,
        }
        self.metrics.dms += 1
        state = self._consent(sender.subject, subject)
        if state == DECLINED:
            self._error(client, p.DM_DECLINED, f"{event['to']} declined your messages")
        elif state == ACCEPTED and recipient is not None:
            self._deliver_all(recipient.clients | sender.clients, _dm(event))
        else:
            # Offline, or the recipient has not answered the request yet: keep it for them.
            self.store.hold_dm(subject, sender.subject, event)
            flag = "queued" if state == ACCEPTED else "held"
            self._deliver_all(sender.clients, _dm({**event, flag: True}))
            if state is None:
                self.store.set_dm_consent(sender.subject, subject, PENDING, sender.subject)
                if recipient is not None:
                    self._deliver_all(recipient.clients, _dm_request(sender.name))

    def _consent(self, sender: str, to: str) -> str | None:
        """Where `sender` stands with `to`; writing to someone who asked you first accepts."""
        found = self.store.dm_consent(sender, to) if sender != to else (ACCEPTED, sender)
        if found is None:
            return None
        state, requester = found
        if state == ACCEPTED or requester == sender:
            return state
        self._accept(sender, requester)
        return ACCEPTED

    def _on_dm_answer(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        name = _text(request, "from")
        requester = self._subject_of(name)
        if requester is None or self.store.dm_consent(user.subject, requester) != (
            PENDING,
            requester,
        ):
            raise _BadRequest(f"no pending request from {name}")
        if request["type"] == "dm_accept":
            self._accept(user.subject, requester)
            return
        self.store.set_dm_consent(user.subject, requester, DECLINED, requester)
        self.store.drop_dms(user.subject, requester)
        waiting = self._users.get(requester)
        if waiting is not None:
            answer = {"type": "dm_declined", "by": user.name}
            self._deliver_all(waiting.clients, Outgoing(answer, None))

    def _accept(self, subject: str, requester: str) -> None:
        """`subject` accepts `requester`: release what was held and tell the requester."""
        self.store.set_dm_consent(subject, requester, ACCEPTED, requester)
        user = self._users.get(subject)
        if user is not None:
            for sender, event in self.store.held_dms(subject):
                if sender == requester:
                    self._deliver_all(user.clients, _dm(event))
            self.store.drop_dms(subject, requester)
        waiting = self._users.get(requester)
        if waiting is not None:
            answer = {"type": "dm_accepted", "by": self._name_of(subject)}
            self._deliver_all(waiting.clients, Outgoing(answer, None))

    def _deliver_waiting(self, client: Client, first: bool) -> None:
        """On connect: DM requests awaiting an answer, and (first connection) DMs kept offline."""
        user = client.user
        assert user is not None
        held = self.store.held_dms(user.subject)
        for requester in dict.fromkeys(sender for sender, _ in held):
            state = self.store.dm_consent(user.subject, requester)
            if state == (PENDING, requester):
                self._send(client, _dm_request(self._name_of(requester)))
            elif first and state is not None and state[0] == ACCEPTED:
                for sender, event in held:
                    if sender == requester:
                        self._send(client, _dm(event))
                self.store.drop_dms(user.subject, requester)

    def _subject_of(self, name: str) -> str | None:
        user = self._names.get(name.casefold())
        return user.subject if user is not None else self.store.subject_of(name)

    def _name_of(self, subject: str) -> str:
        user = self._users.get(subject)
        if user is not None:
            return user.name
        return self.store.identity_name(subject) or subject

    def _on_who(self, client: Client, request: Event) -> None:
        room = client.room
        assert room is not None
        members = {"type": "members", "room": room.name, "members": room.member_names()}
        self._send(client, Outgoing(members, None))

    def _on_history(self, client: Client, request: Event) -> None:
        room = client.room
        assert room is not None
        before = request.get("before")
        limit = request.get("limit", p.HISTORY_PAGE_MAX)
        if before is not None and not _is_int(before):
            raise _BadRequest("'before' must be an integer seq")
        if not _is_int(limit) or limit < 1:
            raise _BadRequest("'limit' must be a positive integer")
        messages = self.store.before(room.name, before, min(limit, p.HISTORY_PAGE_MAX))
        reply = {"type": "history", "room": room.name, "before": before, "messages": messages}
        self._send(client, Outgoing(reply, None))

    def _on_read(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        seq = request.get("seq")
        if not _is_int(seq) or seq < 0:
            raise _BadRequest("'seq' must be a non-negative integer")
        seq = min(seq, self.store.room(room.name)[1])
        old = self.store.read_marker(room.name, user.subject)
        if seq <= old:
            return
        self.store.set_read_marker(room.name, user.subject, seq)
        # Not the whole room: with everyone reporting markers that would cost N deliveries per
        # reader. Who needs it: the reader's other devices (unread counts) and the authors of
        # the messages the marker now covers ("seen by").
        covered = self.store.after(room.name, old) or []
        authors = {message["from"] for message in covered if message["seq"] <= seq}
        told = {c for c in room.clients if c.user is user or c.user.name in authors}
        event = {"type": "read", "room": room.name, "name": user.name, "seq": seq}
        self._deliver_all(told, Outgoing(event, None))

    def _owns(self, client: Client) -> bool:
        """Whether the client's user owns its room; answers `error not_owner` when not."""
        assert client.room is not None and client.user is not None
        if self.store.owner(client.room.name) == client.user.subject:
            return True
        self._error(client, p.NOT_OWNER, "only the room's owner can do that")
        return False

    def _on_topic(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        topic = _text(request, "text")
        if not self._owns(client) or not self._text_ok(client, topic, allow_empty=True):
            return
        self.store.set_topic(room.name, topic)
        ts = p.now_rfc3339()
        event = {"type": "topic", "room": room.name, "topic": topic, "by": user.name, "ts": ts}
        self._fanout(room, Outgoing(event, f"{user.name} :: set the topic: {topic}"))

    def _on_kick(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        name = _text(request, "name")
        if not self._owns(client):
            return
        target = self._names.get(name.casefold())
        if target is None or target not in room.users:
            self._error(client, p.NO_SUCH_USER, f"nobody called {name} is in this room")
            return
        ts = p.now_rfc3339()
        event = {"type": "kick", "room": room.name, "name": target.name, "by": user.name, "ts": ts}
        self._fanout(room, Outgoing(event, f"{target.name} :: was kicked by {user.name}"))
        for kicked in [c for c in target.clients if c.room is room]:
            self.leave(kicked)
            kicked.close(p.CLOSE_KICKED, f"kicked by {user.name}", flush=True)

    def _on_close(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        if not self._owns(client):
            return
        event = {"type": "closed", "room": room.name, "by": user.name, "ts": p.now_rfc3339()}
        self._fanout(room, Outgoing(event, f"{user.name} :: closed the room"))
        del self.rooms[room.name]
        for member in list(room.clients):
            member.room = None
            self.clients.discard(member)
            assert member.user is not None
            member.user.clients.discard(member)
            self._logout_if_gone(member.user)
            member.close(p.CLOSE_ROOM_CLOSED, f"room closed by {user.name}", flush=True)
        self.store.delete_room(room.name)

    def owner_name(self, room: str) -> str | None:
        subject = self.store.owner(room)
        return None if subject is None else self.store.identity_name(subject)

    _handlers: ClassVar[dict[str, Callable[[Hub, Client, Event], None]]] = {
        "say": _on_say,
        "nick": _on_nick,
        "dm": _on_dm,
        "dm_accept": _on_dm_answer,
        "dm_decline": _on_dm_answer,
        "who": _on_who,
        "history": _on_history,
        "read": _on_read,
        "topic": _on_topic,
        "kick": _on_kick,
        "close": _on_close,
    }

    # -- HTTP -----------------------------------------------------------------------------------

    def post(self, room_name: str, sender: str, text: str, address: str = "") -> Event:
        """A message posted over HTTP by a script or bot; raises `PostError` when refused."""
        if not self._address_take(address, self.clock()):
            raise PostError(p.RATE_LIMITED, "too many messages from your address; slow down")
        problem = p.room_error(room_name)
        if problem is not None:
            raise PostError(p.BAD_ROOM, problem)
        problem = p.name_error(sender)
        if problem is not None:
            raise PostError(p.BAD_NAME, problem)
        if sender.casefold() in self._names:
            raise PostError(p.NAME_TAKEN, f"{sender} is a connected user's name")
        text_problem = self._text_problem(text)
        if text_problem is not None:
            raise PostError(*text_problem)
        message = self._message(room_name, sender, text, via="http")
        room = self.rooms.get(room_name)
        if room is not None:
            self._fanout(room, Outgoing(message, f"{sender} :: {text}"))
        return message

    # -- shutdown -------------------------------------------------------------------------------

    def close_all(self, code: int, reason: str) -> None:
        """Ask every connection to flush what it has queued and close."""
        for client in list(self.clients):
            client.close(code, reason, flush=True)

    # -- delivery -------------------------------------------------------------------------------

    def _fanout(self, room: Room, event: Outgoing) -> None:
        members = len(room.clients)
        self.metrics.messages_out += members - self._deliver_all(room.clients, event)

    def _deliver_all(self, clients: Iterable[Client], event: Outgoing) -> int:
        """Queue `event` to each client; the number that could not take it (dropped)."""
        behind: list[Client] = []
        broken: list[Client] = []
        for client in clients:
            # One client that fails (a bug, an event it cannot encode) must not cost the
            # others their copy; the try costs nothing until something raises.
            try:
                if not client.deliver(event):
                    behind.append(client)
            except Exception as error:
                log.error("delivery failed, closing that connection: %r", error)
                broken.append(client)
        if broken:
            self._drop_broken(broken)
        if behind:
            self._drop_slow(behind)
        return len(behind) + len(broken)

    def _send(self, client: Client, event: Outgoing) -> None:
        self._deliver_all((client,), event)

    def _drop_broken(self, clients: list[Client]) -> None:
        for client in clients:
            self.metrics.internal_errors += 1
            self.leave(client)
            client.close(p.CLOSE_INTERNAL_ERROR, "internal error", flush=False)

    def _drop_slow(self, clients: list[Client]) -> None:
        for client in clients:
            if client.room is not None:
                self.metrics.slow_consumers += 1
                self.leave(client)
                client.close(p.CLOSE_SLOW_CONSUMER, "too slow: send queue full", flush=False)

    def _error(self, client: Client, code: str, detail: str) -> None:
        self.metrics.errors[code] += 1
        event = {"type": "error", "code": code, "detail": detail, **self._answering}
        self._send(client, Outgoing(event, f"* error {code}: {detail}"))

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def user_count(self) -> int:
        return len(self._users)


class PostError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _BadRequest(Exception):
    """A request whose fields have the wrong shape; answered with `error bad_request`."""


def _dm(event: Event) -> Outgoing:
    return Outgoing(event, f"{event['from']} -> {event['to']} :: {event['text']}")


def _dm_request(sender: str) -> Outgoing:
    request = {"type": "dm_request", "from": sender, "ts": p.now_rfc3339()}
    return Outgoing(request, f"{sender} -> you :: wants to send you private messages")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(request: Event, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str):
        raise _BadRequest(f"'{field}' must be a string")
    return value
