"""The relay's core: users, rooms, fan-out, history. Plain Python, no sockets.

The hub is driven by the WebSocket layer (or by tests) through `join`, `receive`, `leave` and
`post`, and talks back through `Client.deliver`. Every hub method runs to completion without
awaiting, which is what makes ordering simple: an event is in every member's queue before the
next frame is looked at, and a joiner's welcome and replay are queued before it can see any
live event, so replay and live stream meet without a gap or a duplicate.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeGuard, TypeVar

from coolname import generate_slug

from relay.accounts import (
    Account,
    NameTaken,
    Registry,
    SQLiteRegistry,
    new_account,
    password_problem,
)
from relay.cluster import Backplane
from relay.metrics import Metrics
from relay.names import key, name_problem
from relay.ratelimit import TokenBucket
from relay.store import Store, StoreUnavailable
from relay.tokens import Claims, TokenSigner, new_subject
from shared import protocol as p
from shared.protocol import Event

log = logging.getLogger("relay.core")

CID_MAX = 64
PLAIN_HELP = (
    "* commands: /nick NAME, /msg NAME TEXT, /accept NAME, /decline NAME, /who, /topic TEXT,"
    " /kick NAME, /close, /help; //text posts /text"
)
READ_COST = 0.2  # of a message's rate budget
CID_TTL = 300.0
CID_KEEP = 256
# How long an unregistered identity keeps its name after its last connection closes.
NAME_GRACE = 30 * 86400.0

T = TypeVar("T")
Offload = Callable[[Callable[[], Any], Callable[[Any], None]], None]
STORE_DOWN = "the relay cannot store messages right now; try again later"
REVOKED = "token revoked: log in again"
# Kept DMs go out in pages of about this many characters as the socket takes them.
HELD_PAGE_CHARS = 64 * 1024

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

    __slots__ = ("clients", "epoch", "name", "seq", "users")

    def __init__(self, name: str, epoch: str = "", seq: int = 0) -> None:
        self.name = name
        self.clients: dict[Client, None] = {}
        self.users: dict[User, int] = {}
        # With an ordering backplane: the history epoch, and the last seq handed to members.
        self.epoch = epoch
        self.seq = seq

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
        name_grace: float = NAME_GRACE,
        registry: Registry | None = None,
        token_ttl: float = 0.0,
        backplane: Backplane | None = None,
    ) -> None:
        self.store = store
        self.backplane = backplane or Backplane()
        self.signer = signer
        self.limits = limits or Limits()
        self.clock = clock
        self.name_grace = name_grace
        self.registry = registry or SQLiteRegistry(None)
        self.token_ttl = token_ttl
        # Runs slow work (password hashing) and hands its result back on the hub's thread;
        # the WebSocket layer replaces it with a worker thread.
        self.offload: Offload = _inline
        self._registering: set[str] = set()
        self.metrics = Metrics()
        self.rooms: dict[str, Room] = {}
        self.clients: set[Client] = set()
        self._users: dict[str, User] = {}
        self._names: dict[str, User] = {}
        self._answering: dict[str, str] = {}
        self._parked_cids: dict[str, tuple[float, dict[str, tuple[float, Event]]]] = {}
        # When identities that hold a name went offline, in that order; an identity not here
        # is taken to have left when the relay started (names survive restarts for a grace).
        self._left_at: dict[str, float] = {}
        self._started = clock()
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
            # Everything the store must answer comes before any change here: when it cannot
            # answer (StoreUnavailable), the joiner is refused and nothing is left behind.
            room_epoch, room_seq = self.store.room(room_name)
            if self.store.owner(room_name) is None:
                self.store.set_owner(room_name, user.subject)
            room = self.rooms[room_name] = Room(room_name, room_epoch, room_seq)
            self.backplane.open_room(room_name)
        elif self.backplane.ordered:
            self._catch_up(room)
        client.user = user
        client.room = room
        client.generation = self.registry.generation(user.subject)
        self.clients.add(client)
        self.metrics.connections_total += 1
        try:
            if client.json:
                self._welcome(client, room, backlog, since, epoch)
            self._deliver_waiting(client, first=not user.clients)
        except StoreUnavailable:
            client.room = None
            self.clients.discard(client)
            self._forget_room_if_empty(room)
            self._logout_if_gone(user)
            raise
        if client.room is None:
            # Closed before it was a member (e.g. dropped as too slow): nothing to undo.
            return
        user.clients.add(client)
        room.clients[client] = None
        count = room.users.get(user, 0)
        room.users[user] = count + 1
        joined = Outgoing(
            {"type": "join", "room": room.name, "name": user.name, "ts": p.now_rfc3339()},
            f"{user.name} :: joined the chat",
        )
        if count == 0 and self.backplane.joined(room.name, user.name):
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
        if self.backplane.ordered:
            # What this node has handed on so far: the live stream continues from there.
            epoch_now, seq = room.epoch, room.seq
        members = self._members(room, also=user)
        welcome: Event = {
            "type": "welcome",
            "room": room.name,
            "you": user.name,
            "token": self.issue_token(user.subject, user.name),
            "members": members,
            "seq": seq,
            "epoch": epoch_now,
            "limits": self.limits.describe(),
            "owner": self.owner_name(room.name),
            "topic": self.store.topic(room.name),
            "read": self.store.read_marker(room.name, user.subject),
            "private": self.registry.is_private(room.name),
        }
        count = self.limits.backlog if backlog is None else max(0, backlog)
        replay: list[Event] | None = None
        if since is not None:
            if epoch == epoch_now:
                replay = self.store.after(room.name, since)
            welcome["recovered"] = replay is not None
        if replay is None:
            replay = self.store.before(room.name, seq + 1, count)
        elif replay and replay[-1]["seq"] > seq:
            replay = [message for message in replay if message["seq"] <= seq]
        welcome["replay"] = len(replay)
        events = [Outgoing(welcome, None)]
        events += [Outgoing({**message, "replay": True}, None) for message in replay]
        client.preload(events)

    def issue_token(self, subject: str, name: str) -> str:
        return self.signer.issue(subject, name, self.registry.generation(subject))

    def refusal(self, token: str | None, room: str | None = None) -> str | None:
        """Why a connection presenting `token` may not log in (or enter `room`), or None.

        Checked before joining: a revoked token, or an expired one of a registered identity,
        must log in again with its password; an expired anonymous one just starts afresh.
        An invite-only room admits its members only.
        """
        rejection = self.signer.rejection(token) if token else None
        if rejection is not None:
            return rejection
        claims = self.signer.claims(token) if token else None
        if claims is not None:
            if self._revoked(claims):
                return REVOKED
            if self._expired(claims.issued) and self.registry.account(claims.subject):
                return "token expired: log in again"
        if room is not None and not self.may_enter(room, self.subject_for(token)):
            return f"#{room} is invite-only: ask its owner to /invite you"
        return None

    def subject_for(self, token: str | None) -> str | None:
        """The identity a token proves, if it is valid, unexpired and not revoked."""
        claims = self.signer.claims(token) if token else None
        if claims is None or self._expired(claims.issued) or self._revoked(claims):
            return None
        return claims.subject

    def _revoked(self, claims: Claims) -> bool:
        return claims.revocable and claims.generation < self.registry.generation(claims.subject)

    def may_enter(self, room: str, subject: str | None) -> bool:
        if not self.registry.is_private(room):
            return True
        return subject is not None and self.registry.is_member(room, subject)

    def _expired(self, issued: float) -> bool:
        return self.token_ttl > 0 and time.time() - issued > self.token_ttl

    def _login(self, token: str | None) -> User:
        claims = self.signer.claims(token) if token else None
        if claims is not None and self._expired(claims.issued):
            claims = None
        if claims is not None:
            subject, token_name = claims.subject, claims.name
            user = self._users.get(subject)
            if user is not None:
                return user
            account = self.registry.account(subject)
            name = self.store.identity_name(subject) or token_name
            if account is not None:
                name = account.name
            # Another identity may have taken the name (after the grace period) while this one
            # was away: the store's name→identity row decides, so one name is one identity.
            holder = self._names.get(key(name))
            owner = self.store.subject_of(name)
            registered = self.registry.account_named(name)
            if account is None and (
                name_problem(name) is not None
                or (holder is not None and holder.subject != subject)
                or owner not in (None, subject)
                or registered is not None
            ):
                name = self._fresh_name()
        else:
            subject, name = new_subject(), self._fresh_name()
        # Before anything is registered here: a store that cannot take it refuses the login.
        self.store.set_identity_name(subject, name)
        user = User(subject, name, TokenBucket(self.limits.rate, self.limits.burst, self.clock()))
        parked = self._parked_cids.pop(subject, None)
        if parked is not None:
            user.cids = parked[1]
        self._left_at.pop(subject, None)
        self._users[subject] = user
        self._names[key(name)] = user
        self.backplane.open_user(subject)
        return user

    def _fresh_name(self) -> str:
        """A random name nobody known to the store has, online or not."""
        while True:
            name = generate_slug(2)
            fresh = name_problem(name) is None and key(name) not in self._names
            unknown = fresh and self.store.subject_of(name) is None
            if unknown and self.registry.account_named(name) is None:
                return name

    def _reserved_for_other(self, name: str, subject: str) -> bool:
        """Whether `name` (or a look-alike) belongs to another identity than `subject`.

        A name is its identity's while it is connected and for `name_grace` after; later
        another identity may take it, and the old one gets a fresh name when it returns.
        A registered name is its identity's for good.
        """
        account = self.registry.account_named(name)
        if account is not None:
            return account.subject != subject
        holder = self._names.get(key(name))
        if holder is not None:
            return holder.subject != subject
        owner = self.store.subject_of(name)
        if owner is None or owner == subject:
            return False
        return self.clock() - self._left_at.get(owner, self._started) < self.name_grace

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
            if self.backplane.left(room.name, user.name):
                ts = p.now_rfc3339()
                left = {"type": "leave", "room": room.name, "name": user.name, "ts": ts}
                self._fanout(room, Outgoing(left, f"{user.name} :: left the chat"))
        self._forget_room_if_empty(room)
        self._logout_if_gone(user)

    def _forget_room_if_empty(self, room: Room) -> None:
        if room.clients or self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        self.backplane.close_room(room.name)
        # Only housekeeping: an empty room left behind is released on its next use.
        with contextlib.suppress(StoreUnavailable):
            self.store.release(room.name)

    def _logout_if_gone(self, user: User) -> None:
        if user.clients:
            return
        self._users.pop(user.subject, None)
        if self._names.get(key(user.name)) is user:
            del self._names[key(user.name)]
        self.backplane.close_user(user.subject)
        # Seen until now: how long an identity has been away counts from its last logout.
        with contextlib.suppress(StoreUnavailable):
            self.store.set_identity_name(user.subject, user.name)
        now = self.clock()
        self._left_at[user.subject] = now
        while self._left_at:
            subject, left_at = next(iter(self._left_at.items()))
            if now - left_at < self.name_grace:
                break
            del self._left_at[subject]
        # A client that lost its only connection retries with the same cids after it comes
        # back: keep them for the dedupe window. Parked in logout order, so expiry is a pop
        # from the front.
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
                try:
                    self._plain_line(client, _strip_line_break(text))
                except StoreUnavailable:
                    self._error(client, p.UNAVAILABLE, STORE_DOWN)
            return
        try:
            request = p.parse(text)
        except ValueError:
            request = None
        kind = request.get("type") if isinstance(request, dict) else None
        problem = _fields_problem(request) if isinstance(request, dict) else None
        # Errors name the request they answer (a refusal for the rate too), so a client can
        # tell which of several it was; a cid that failed the field check is not echoed.
        if isinstance(request, dict) and isinstance(kind, str) and kind in self._handlers:
            self._answering = {"request": kind}
            if problem is None and isinstance(request.get("cid"), str):
                self._answering["cid"] = request["cid"]
        try:
            # Read markers are cheap, not free: a client sends them on its own, so five of them
            # cost what one message does, and a refused one is dropped without an error event
            # (it would look like a refusal of the user's last message); it still counts toward
            # a flood.
            if kind == "read" and _is_int(request.get("seq")):
                if not self._admit(client, READ_COST, quiet=True):
                    return
            elif not self._admit(client):
                return
            if not isinstance(request, dict):
                self._error(client, p.BAD_JSON, "frame must be a JSON object")
                return
            if problem is not None:
                self._error(client, p.BAD_TEXT, problem)
                return
            handler = self._handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                self._error(client, p.UNKNOWN_TYPE, f"unknown type {kind!r}"[:200])
                return
            self._handle(client, handler, request)
        except StoreUnavailable:
            self._error(client, p.UNAVAILABLE, STORE_DOWN)
        finally:
            self._answering = {}

    def _handle(
        self, client: Client, handler: Callable[[Hub, Client, Event], None], request: Event
    ) -> None:
        try:
            handler(self, client, request)
        except _BadRequest as bad:
            self._error(client, p.BAD_REQUEST, str(bad))

    def _plain_line(self, client: Client, text: str) -> None:
        """A plain client's line: a message, or one of the commands a bare client needs.

        `//text` posts `/text` (the IRC convention); any other line starting with `/` is a
        command, so a typo is answered with an error instead of being posted to the room.
        """
        if not text.startswith("/") or text.startswith("//"):
            self._say(client, text[1:] if text.startswith("//") else text, None)
            return
        name, _, arg = text[1:].partition(" ")
        arg = arg.strip()
        head, _, rest = arg.partition(" ")
        requests: dict[str, Event] = {
            "nick": {"type": "nick", "name": arg},
            "msg": {"type": "dm", "to": head, "text": rest.strip()},
            "accept": {"type": "dm_accept", "from": arg},
            "decline": {"type": "dm_decline", "from": arg},
            "who": {"type": "who"},
            "topic": {"type": "topic", "text": arg},
            "kick": {"type": "kick", "name": arg},
            "close": {"type": "close"},
        }
        request = requests.get(name.lower())
        problem = None if request is None else _fields_problem(request)
        if problem is not None:
            self._error(client, p.BAD_TEXT, problem)
        elif request is not None:
            self._handle(client, self._handlers[request["type"]], request)
        elif name.lower() == "help":
            self._send(client, Outgoing({"type": "help"}, PLAIN_HELP))
        else:
            detail = f"unknown command /{name[:32]} (/help lists them; //text posts /text)"
            self._error(client, p.BAD_REQUEST, detail)

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
        if self._store_down(client):
            return
        plain = _plain(f"{user.name} :: ", text)
        message = self._message(room.name, user.name, text, plain, cid=cid)
        if cid is not None:
            user.cids[cid] = (self.clock(), message)
        if not self.backplane.ordered:
            self._fanout_local(room, Outgoing(message, plain))

    def _message(self, room: str, sender: str, text: str, plain: str, **extra: str | None) -> Event:
        """A new room message, numbered and kept in the room's history; None extras are left out."""
        message: Event = {
            "type": "message",
            "room": room,
            "id": self._next_id(),
            "seq": 0,  # numbered by the store (add), here so the fields keep their order
            "ts": p.now_rfc3339(),
            "from": sender,
            "text": text,
        }
        message.update((key, value) for key, value in extra.items() if value is not None)
        message = self.store.add(room, message, plain)
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
        """(code, detail) when `text` cannot be posted: not text, blank, or over the size limit."""
        problem = p.text_error(text)
        if problem is not None:
            return p.BAD_TEXT, problem
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
        if self.registry.account(user.subject) is not None:
            self._error(client, p.REGISTERED, "a registered name is your login: it cannot change")
            return
        problem = name_problem(new)
        if problem is not None:
            self._error(client, p.BAD_NAME, problem)
            return
        if self._reserved_for_other(new, user.subject):
            self._error(
                client, p.NAME_TAKEN, f"{new} is already taken (or looks like a name that is)"
            )
            return
        old = user.name
        if new == old:
            return
        del self._names[key(old)]
        self._names[key(new)] = user
        user.name = new
        self.store.set_identity_name(user.subject, new, chosen=True)
        ts = p.now_rfc3339()
        for room in {c.room for c in list(user.clients) if c.room is not None}:
            self.backplane.left(room.name, old)
            self.backplane.joined(room.name, new)
            event = {"type": "nick", "room": room.name, "old": old, "new": new, "ts": ts}
            self._fanout(room, Outgoing(event, f"{old} :: is now known as {new}"))

    def _on_register(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        password = _text(request, "password")
        problem = password_problem(password)
        if problem is not None:
            self._error(client, p.BAD_PASSWORD, problem)
            return
        if self.registry.account(user.subject) is not None or user.subject in self._registering:
            self._error(client, p.REGISTERED, f"{user.name} is already registered")
            return
        subject, name, answering = user.subject, user.name, self._answering
        # One hash at a time per identity: a client repeating `register` costs one, not many.
        self._registering.add(subject)

        def done(account: Account) -> None:
            self._registering.discard(subject)
            self._answering = answering
            try:
                problem = self.add_account(account)
                if problem is not None and client.room is not None:
                    self._error(client, p.NAME_TAKEN, problem)
            finally:
                self._answering = {}

        self.offload(lambda: new_account(subject, name, password), done)

    def add_account(self, account: Account) -> str | None:
        """Keep a freshly hashed account; why not when something changed while hashing."""
        subject, current = account.subject, self._users.get(account.subject)
        name = current.name if current is not None else self.store.identity_name(subject)
        name = name or account.name
        if name != account.name:
            return f"you are called {name} now; register again"
        if current is None and (
            name_problem(name) is not None
            or self._reserved_for_other(name, subject)
            or self.store.subject_of(name) not in (None, subject)
        ):
            return f"{name} is already taken (or looks like a name that is)"
        if self.registry.account(subject) is not None:
            return f"{name} is already registered"
        try:
            # Atomic in a shared registry: another node may have registered the name meanwhile.
            self.registry.add(account)
        except NameTaken:
            return f"{name} is already taken (or looks like a name that is)"
        if current is None:
            self.store.set_identity_name(subject, name)
        if current is not None:
            event = {"type": "registered", "name": name}
            self._deliver_all(
                current.clients,
                Outgoing({**event, "token": self.issue_token(account.subject, name)}, None),
            )
        return None

    def cut_revoked(self) -> int:
        """Close the connections of identities revoked by `chat-relay tokens revoke`; how many.

        That command writes accounts.db from another process, so nothing here hears of it:
        the app layer calls this every few seconds. Nothing is read while the file is
        unchanged; after a change, one lookup per connected identity.
        """
        if not self.registry.changed_elsewhere():
            return 0
        cut = 0
        for user in list(self._users.values()):
            generation = self.registry.generation(user.subject)
            for connection in [c for c in user.clients if c.generation < generation]:
                self.leave(connection)
                connection.close(p.CLOSE_POLICY, REVOKED, flush=True)
                cut += 1
        return cut

    def _on_logout_everywhere(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        if self.registry.account(user.subject) is None:
            self._error(client, p.NOT_REGISTERED, "register first: you could not log in again")
            return
        self.registry.revoke(user.subject)
        for connection in list(user.clients):
            self.leave(connection)
            connection.close(p.CLOSE_POLICY, "logged out everywhere: log in again", flush=True)

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
        elif state == ACCEPTED and (
            # Online here, or somewhere else (the other node delivers it).
            self.backplane.publish_user(subject, event, _dm(event).plain) or recipient is not None
        ):
            outgoing = _dm(event)
            self._to_user(sender.subject, outgoing, publish=subject != sender.subject)
            if recipient is not None:
                self._deliver_all(recipient.clients - sender.clients, outgoing)
        elif not self._store_down(client):
            # Offline, or the recipient has not answered the request yet: keep it for them.
            self.store.hold_dm(subject, sender.subject, event)
            flag = "queued" if state == ACCEPTED else "held"
            self._deliver_all(sender.clients, _dm({**event, flag: True}))
            if state is None:
                self.store.set_dm_consent(sender.subject, subject, PENDING, sender.subject)
                self._to_user(subject, _dm_request(sender.name))

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
        answer = {"type": "dm_declined", "by": user.name}
        plain = f"{user.name} -> you :: declined your private messages"
        self._to_user(requester, Outgoing(answer, plain))

    def _accept(self, subject: str, requester: str) -> None:
        """`subject` accepts `requester`: release what was held and tell the requester."""
        self.store.set_dm_consent(subject, requester, ACCEPTED, requester)
        user = self._users.get(subject)
        if user is not None:
            held = [event for sender, event in self.store.held_dms(subject) if sender == requester]
            for client in list(user.clients):
                self._drain_held(client, held)
        by = self._name_of(subject)
        answer = {"type": "dm_accepted", "by": by}
        plain = f"{by} -> you :: accepted your private messages"
        self._to_user(requester, Outgoing(answer, plain))

    def _deliver_waiting(self, client: Client, first: bool) -> None:
        """On connect: DM requests awaiting an answer, and (first connection) DMs kept offline."""
        user = client.user
        assert user is not None
        held = self.store.held_dms(user.subject)
        requests: list[Outgoing] = []
        accepted: set[str] = set()
        for requester in dict.fromkeys(sender for sender, _ in held):
            state = self.store.dm_consent(user.subject, requester)
            if state == (PENDING, requester):
                requests.append(_dm_request(self._name_of(requester)))
            elif first and state is not None and state[0] == ACCEPTED:
                accepted.add(requester)
        # Part of the joiner's first frames, like the welcome: never counted as falling behind.
        client.preload(requests)
        self._drain_held(client, [event for sender, event in held if sender in accepted])

    def _drain_held(self, client: Client, held: list[Event]) -> None:
        """Send kept DMs a page at a time, each page once the socket took the one before.

        An offline queue can be far larger than a connection's send budget: queued at once
        it would drop the recipient as a slow consumer. A DM is forgotten only once written
        to the socket, so a connection that goes away first leaves the rest kept for later.
        """
        if not held or client.room is None:
            return
        user = client.user
        assert user is not None
        size, count = 0, 0
        while count < len(held) and (count == 0 or size < HELD_PAGE_CHARS):
            size += len(held[count]["text"]) + 200
            count += 1
        page, rest = held[:count], held[count:]
        client.preload([_dm(event) for event in page])

        def written() -> None:
            self.store.forget_dms(user.subject, [event["id"] for event in page])
            self._drain_held(client, rest)

        client.when_written(written)

    def _subject_of(self, name: str) -> str | None:
        user = self._names.get(key(name))
        return user.subject if user is not None else self.store.subject_of(name)

    def _name_of(self, subject: str) -> str:
        user = self._users.get(subject)
        if user is not None:
            return user.name
        return self.store.identity_name(subject) or subject

    def _on_who(self, client: Client, request: Event) -> None:
        room = client.room
        assert room is not None
        names = self._members(room)
        members = {"type": "members", "room": room.name, "members": names, **self._cid()}
        self._send(client, Outgoing(members, f"* members: {', '.join(names)}"))

    def _members(self, room: Room, also: User | None = None) -> list[str]:
        """Who is in the room on this node and (with a backplane) on every other."""
        names = room.member_names(also)
        everywhere = self.backplane.members(room.name)
        return names if everywhere is None else sorted(set(names).union(everywhere))

    def _on_history(self, client: Client, request: Event) -> None:
        room = client.room
        assert room is not None
        before = request.get("before")
        limit = request.get("limit", p.HISTORY_PAGE_MAX)
        if before is not None and not _is_int(before):
            raise _BadRequest("'before' must be an integer seq")
        if not _is_int(limit) or limit < 1:
            raise _BadRequest("'limit' must be a positive integer")
        # Within what any store can hold (SQLite integers are 64-bit); the reply names the request.
        upto = None if before is None else max(0, min(before, self.store.room(room.name)[1] + 1))
        messages = self.store.before(room.name, upto, min(limit, p.HISTORY_PAGE_MAX))
        reply = {
            "type": "history",
            "room": room.name,
            "before": before,
            "messages": messages,
            **self._cid(),
        }
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
        told = {c for c in room.clients if c.user is user or (c.user and c.user.name in authors)}
        event = {"type": "read", "room": room.name, "name": user.name, "seq": seq}
        self._deliver_all(told, Outgoing(event, None))
        self.backplane.publish_room(room.name, event, None, to=sorted(authors | {user.name}))

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
        if self._store_down(client):
            return
        self.store.set_topic(room.name, topic)
        ts = p.now_rfc3339()
        event = {"type": "topic", "room": room.name, "topic": topic, "by": user.name, "ts": ts}
        plain = _plain(f"{user.name} :: ", topic, first="set the topic: ")
        self._fanout(room, Outgoing(event, plain))

    def _on_kick(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        name = _text(request, "name")
        if not self._owns(client):
            return
        target = self._names.get(key(name))
        if target is not None and target in room.users:
            name = target.name
        else:
            elsewhere = self.backplane.members(room.name) or []
            found = [member for member in elsewhere if key(member) == key(name)]
            if not found:
                self._error(client, p.NO_SUCH_USER, f"nobody called {name} is in this room")
                return
            name = found[0]
        subject = target.subject if target is not None else self.store.subject_of(name)
        if subject is not None:
            # In an invite-only room a kick also takes the membership away: a ban, not a timeout.
            self.registry.remove_member(room.name, subject)
        ts = p.now_rfc3339()
        event = {"type": "kick", "room": room.name, "name": name, "by": user.name, "ts": ts}
        self._fanout(room, Outgoing(event, f"{name} :: was kicked by {user.name}"))
        self._close_member(room, name, f"kicked by {user.name}")

    def _on_close(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        if not self._owns(client):
            return
        event = {"type": "closed", "room": room.name, "by": user.name, "ts": p.now_rfc3339()}
        self._fanout(room, Outgoing(event, f"{user.name} :: closed the room"))
        self._close_room(room, f"room closed by {user.name}")
        self.store.delete_room(room.name)
        self.store.release(room.name)
        self.registry.set_private(room.name, False, set())

    def _close_room(self, room: Room, reason: str) -> None:
        """Close every connection of this node in the room (its owner closed it)."""
        del self.rooms[room.name]
        self.backplane.close_room(room.name)
        for member in list(room.clients):
            member.room = None
            self.clients.discard(member)
            assert member.user is not None
            member.user.clients.discard(member)
            if room.users.pop(member.user, None) is not None:
                self.backplane.left(room.name, member.user.name)
            self._logout_if_gone(member.user)
            member.close(p.CLOSE_ROOM_CLOSED, reason, flush=True)

    def _close_member(self, room: Room, name: str, reason: str) -> None:
        """Close this node's connections of `name` in the room (kicked or removed)."""
        target = self._names.get(key(name))
        for gone in [c for c in target.clients if c.room is room] if target else []:
            self.leave(gone)
            gone.close(p.CLOSE_KICKED, reason, flush=True)

    def _on_private(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        private = request.get("private")
        if not isinstance(private, bool):
            raise _BadRequest("'private' must be true or false")
        if not self._owns(client):
            return
        # Whoever is in the room when it closes its doors stays in.
        self.registry.set_private(room.name, private, {member.subject for member in room.users})
        what = "made the room invite-only" if private else "opened the room to everyone"
        self._owner_did(
            room, user, {"type": "private", "private": private}, f"{user.name} :: {what}"
        )

    def _owner_did(self, room: Room, owner: User, event: Event, plain: str) -> Outgoing:
        """Tell the room what its owner changed: every such event names the room, who, when."""
        fields = {**event, "room": room.name, "by": owner.name, "ts": p.now_rfc3339()}
        outgoing = Outgoing(fields, plain)
        self._fanout(room, outgoing)
        return outgoing

    def _member_target(self, client: Client, request: Event) -> tuple[str, str] | None:
        """(subject, name) of the identity an owner's invite/remove/owner request names."""
        name = _text(request, "name")
        if not self._owns(client):
            return None
        subject = self._subject_of(name)
        if subject is None:
            self._error(client, p.NO_SUCH_USER, f"nobody has ever been called {name}")
            return None
        return subject, self._name_of(subject)

    def _on_invite(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        target = self._member_target(client, request)
        if target is None:
            return
        if not self.registry.is_private(room.name):
            raise _BadRequest("the room is open to everyone; /private on first")
        subject, name = target
        self.registry.add_member(room.name, subject)
        outgoing = self._owner_did(
            room, user, {"type": "invited", "name": name}, f"{name} :: was invited by {user.name}"
        )
        invitee = self._users.get(subject)
        if invitee is not None:
            self._deliver_all({c for c in invitee.clients if c.room is not room}, outgoing)

    def _on_remove(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        target = self._member_target(client, request)
        if target is None:
            return
        subject, name = target
        if not self.registry.is_private(room.name):
            raise _BadRequest("the room is open to everyone: /kick instead")
        if subject == user.subject:
            raise _BadRequest("the owner cannot remove itself; hand the room over first")
        self.registry.remove_member(room.name, subject)
        plain = f"{name} :: was removed by {user.name}"
        self._owner_did(room, user, {"type": "removed", "name": name}, plain)
        self._close_member(room, name, f"removed from #{room.name} by {user.name}")

    def _on_owner(self, client: Client, request: Event) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        target = self._member_target(client, request)
        if target is None:
            return
        subject, name = target
        if self.registry.is_private(room.name):
            self.registry.add_member(room.name, subject)
        self.store.set_owner(room.name, subject)
        self._owner_did(
            room, user, {"type": "owner", "owner": name}, f"{name} :: now owns the room"
        )

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
        "register": _on_register,
        "private": _on_private,
        "invite": _on_invite,
        "remove": _on_remove,
        "owner": _on_owner,
        "logout_everywhere": _on_logout_everywhere,
    }

    # -- HTTP -----------------------------------------------------------------------------------

    def post(self, room_name: str, sender: str, text: str, address: str = "") -> Event:
        """A message posted over HTTP by a script or bot; raises `PostError` when refused."""
        if not self._address_take(address, self.clock()):
            raise PostError(p.RATE_LIMITED, "too many messages from your address; slow down")
        problem = p.room_error(room_name)
        if problem is not None:
            raise PostError(p.BAD_ROOM, problem)
        problem = name_problem(sender)
        if problem is not None:
            raise PostError(p.BAD_NAME, problem)
        if self.registry.is_private(room_name):
            raise PostError(p.NOT_MEMBER, f"#{room_name} is invite-only: no posts over HTTP")
        # Any identity's name, online or not, or a look-alike of one: a script is not a user.
        taken = key(sender) in self._names or self.store.subject_of(sender) is not None
        if taken or self.registry.account_named(sender) is not None:
            raise PostError(p.NAME_TAKEN, f"{sender} is a user's name (or looks like one)")
        text_problem = self._text_problem(text)
        if text_problem is not None:
            raise PostError(*text_problem)
        if self.store.problem() is not None:
            raise PostError(p.UNAVAILABLE, STORE_DOWN)
        plain = _plain(f"{sender} (via http) :: ", text)
        message = self._message(room_name, sender, text, plain, via="http")
        room = self.rooms.get(room_name)
        if room is not None and not self.backplane.ordered:
            self._fanout_local(room, Outgoing(message, plain))
        return message

    def announce(self, text: str) -> tuple[Event, int]:
        """An operator's notice to every live room; raises `PostError` when refused.

        Not a room message: it takes no seq and is kept nowhere, so it reaches who is connected
        now. The event and the number of rooms it went to are returned.
        """
        problem = self._text_problem(text)
        if problem is not None:
            raise PostError(*problem)
        notice: Event = {"type": "announce", "id": self._next_id(), "ts": p.now_rfc3339()}
        rooms = self._announce_here({**notice, "text": text})
        self.backplane.publish_all({**notice, "text": text}, None)
        return {**notice, "text": text}, rooms

    def _announce_here(self, notice: Event) -> int:
        rooms = list(self.rooms.values())
        for room in rooms:
            event = {**notice, "room": room.name}
            self._fanout_local(room, Outgoing(event, f"* announcement: {notice['text']}"))
        return len(rooms)

    # -- shutdown -------------------------------------------------------------------------------

    def close_all(self, code: int, reason: str) -> None:
        """Ask every connection to flush what it has queued and close."""
        for client in list(self.clients):
            client.close(code, reason, flush=True)

    # -- delivery -------------------------------------------------------------------------------

    def _fanout(self, room: Room, event: Outgoing) -> None:
        """A room event (not a message) to the room's members here and on every other node."""
        self._fanout_local(room, event)
        self.backplane.publish_room(room.name, event.data, event.plain)

    def _fanout_local(self, room: Room, event: Outgoing) -> None:
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

    def _store_down(self, client: Client) -> bool:
        """Refuse, with `error unavailable`, a change the store cannot keep now.

        An echo promises the message is kept; while the store cannot write, the relay does
        not make promises it may break.
        """
        if self.store.problem() is None:
            return False
        self._error(client, p.UNAVAILABLE, STORE_DOWN)
        return True

    def _cid(self) -> dict[str, str]:
        """The answered request's `cid`, echoed on a reply that goes only to its sender."""
        cid = self._answering.get("cid")
        return {"cid": cid} if cid is not None else {}

    def _error(self, client: Client, code: str, detail: str) -> None:
        self.metrics.errors[code] += 1
        event = {"type": "error", "code": code, "detail": detail, **self._answering}
        self._send(client, Outgoing(event, f"* error {code}: {detail}"))

    def _next_id(self) -> str:
        return f"{self._id_prefix}-{next(self._ids):x}"

    def user_count(self) -> int:
        return len(self._users)

    def _to_user(self, subject: str, event: Outgoing, publish: bool = True) -> None:
        """An event for every connection of an identity, on this node and (`publish`) others."""
        user = self._users.get(subject)
        if user is not None:
            self._deliver_all(user.clients, event)
        if publish:
            self.backplane.publish_user(subject, event.data, event.plain)

    # -- from other nodes (relay.cluster) -------------------------------------------------------

    def remote_message(
        self, room_name: str, message: Event, plain: str | None, encoded: str
    ) -> None:
        """A room message in the shared order: handed on once, in seq order, never twice."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        seq = message["seq"]
        if seq <= room.seq:
            return
        if seq > room.seq + 1:
            self._catch_up(room)
            if seq <= room.seq:
                return
        room.seq = seq
        self._fanout_local(room, Outgoing(message, plain, encoded))

    def _catch_up(self, room: Room) -> None:
        """Hand on what the shared store has beyond what this node delivered in the room.

        Runs when the subscription missed something: it had not started yet, or it broke.
        A room whose history began anew (Redis came back empty) is closed here with 1012, so
        its clients join again and learn the new epoch.
        """
        try:
            epoch, latest = self.store.room(room.name)
            if latest <= room.seq and epoch == room.epoch:
                return
            missed = self.store.after(room.name, room.seq) if epoch == room.epoch else None
        except StoreUnavailable:
            return
        if missed is None:
            for client in list(room.clients):
                self.leave(client)
                client.close(p.CLOSE_RESTART, "the room's history was reset: join again", True)
            return
        for message in missed:
            room.seq = message["seq"]
            plain = _message_plain(message)
            self._fanout_local(room, Outgoing(message, plain))

    def catch_up(self, room_name: str) -> None:
        room = self.rooms.get(room_name)
        if room is not None:
            self._catch_up(room)

    def present_again(self) -> None:
        """This node's presence was lost (Redis away too long): its members join again.

        Locally they never left; the other nodes swept them and hear them come back.
        """
        for user in list(self._users.values()):
            self.backplane.open_user(user.subject)
        for room in list(self.rooms.values()):
            for user in list(room.users):
                if self.backplane.joined(room.name, user.name):
                    event = {"type": "join", "room": room.name, "name": user.name}
                    event["ts"] = p.now_rfc3339()
                    plain = f"{user.name} :: joined the chat"
                    self.backplane.publish_room(room.name, event, plain)

    def resync(self) -> None:
        """The subscriptions are back after a break: deliver what was missed in every room."""
        for room in list(self.rooms.values()):
            self._catch_up(room)

    def remote_event(
        self, room_name: str, event: Event, plain: str | None, to: list[str] | None
    ) -> None:
        """A room event from another node: to this node's members, with what it implies here."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        kind = event.get("type")
        if to is not None:
            names = set(to)
            told = [c for c in room.clients if c.user is not None and c.user.name in names]
            self._deliver_all(told, Outgoing(event, plain))
            return
        self._fanout_local(room, Outgoing(event, plain))
        if kind in ("kick", "removed"):
            self._close_member(room, str(event.get("name")), f"{kind} by {event.get('by')}")
        elif kind == "closed":
            self._close_room(room, f"room closed by {event.get('by')}")

    def remote_user(self, subject: str, event: Event, plain: str | None) -> None:
        """An event for an identity, sent on another node (a DM, a request, an answer)."""
        user = self._users.get(subject)
        if user is not None:
            self._deliver_all(user.clients, Outgoing(event, plain))

    def remote_all(self, event: Event) -> None:
        """An announcement made on another node."""
        self._announce_here(event)

    # -- what the HTTP layer asks of the store (it never reaches the store itself) --------------

    def health_problem(self) -> str | None:
        """Why this node cannot take messages now (store or backplane), or None."""
        problem = self.store.problem()
        if problem is not None:
            return f"store: {problem}"
        problem = self.backplane.problem()
        if problem is not None:
            return f"backplane: {problem}"
        return self.registry.problem()

    def store_healthy(self) -> bool:
        return self.store.problem() is None

    def backplane_metrics(self) -> str:
        return self.backplane.metrics()

    def store_counters(self) -> tuple[int, int]:
        """(failed write attempts so far, changes waiting to be written) for /metrics."""
        return self.store.counters()

    def room_topic(self, room: str) -> str | None:
        return self.store.topic(room)

    def history_page(
        self, room: str, before: int | None, limit: int
    ) -> tuple[str, int, list[Event]]:
        """The room's epoch and latest seq, and up to `limit` messages below `before`."""
        epoch, seq = self.store.room(room)
        return epoch, seq, self.store.before(room, before, limit)

    def room_members(self) -> dict[str, tuple[int, int]]:
        """(members, connections here) of every room with members, on any node."""
        here = {room.name: (len(room.users), len(room.clients)) for room in self.rooms.values()}
        everywhere = self.backplane.rooms()
        if everywhere is None:
            return here
        return {room: (count, here.get(room, (0, 0))[1]) for room, count in everywhere.items()}

    def stored_name(self, subject: str) -> str | None:
        """The name the store last knew for an identity, online or not."""
        return self.store.identity_name(subject)


def _inline(work: Callable[[], T], done: Callable[[T], None]) -> None:
    done(work())


class PostError(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class _BadRequest(Exception):
    """A request whose fields have the wrong shape; answered with `error bad_request`."""


def _message_plain(message: Event) -> str:
    via = " (via http)" if message.get("via") == "http" else ""
    return _plain(f"{message['from']}{via} :: ", message["text"])


def _dm(event: Event) -> Outgoing:
    return Outgoing(event, _plain(f"{event['from']} -> {event['to']} :: ", event["text"]))


def _plain(prefix: str, text: str, first: str = "") -> str:
    """The plain form of user text: every line starts with `prefix`, naming who wrote it.

    Without it, a newline in the text would let its author show plain clients a line that
    seems to come from someone else, or from the relay. Built once per event.
    """
    if "\n" in text:
        text = text.replace("\n", "\n" + prefix)
    return prefix + first + text


def _strip_line_break(text: str) -> str:
    """A plain frame without the line break that line-oriented clients (websocat) end it with."""
    if text.endswith("\n"):
        return text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def _dm_request(sender: str) -> Outgoing:
    request = {"type": "dm_request", "from": sender, "ts": p.now_rfc3339()}
    plain = f"{sender} -> you :: wants to send you private messages (/accept {sender})"
    return Outgoing(request, plain)


def _fields_problem(request: Event) -> str | None:
    """Why a string field other than `text` cannot be taken, or None.

    Any field may be echoed back (a cid, a name in an error's detail), so all are checked
    here, once per request. `text` is left to `Hub._text_problem`, which every handler that
    uses it runs anyway.
    """
    for field, value in request.items():
        if field != "text" and isinstance(value, str):
            problem = p.text_error(value)
            if problem is not None:
                return f"{field!r}: {problem}"[:200]
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(request: Event, field: str) -> str:
    value = request.get(field)
    if not isinstance(value, str):
        raise _BadRequest(f"'{field}' must be a string")
    return value
