"""The relay's core: connections, rooms, fan-out, history. Plain Python, no sockets.

The hub is driven by the WebSocket layer (or by tests) through `join`, `receive`, `leave` and
`post`, and talks back through `Client.deliver`. Every hub method runs to completion without
awaiting, which is what makes ordering simple: an event is in every member's queue before the
next frame is looked at, and a joiner's welcome and replay are queued before it can see any
live event, so replay and live stream meet without a gap or a duplicate.

The hub keeps connections, rooms, fan-out and history windows, and dispatches each request.
Identities, names, tokens and an identity's own requests live in relay.identities; DMs and
the offline mailbox in relay.dms; a room owner's requests in relay.owners; reading a frame
in relay.frames; what other nodes send in relay.remote. The data they share (Limits, Client,
User, Room, Outgoing) is in relay.model, re-exported here.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from relay.accounts import Account, Registry, SQLiteRegistry
from relay.cluster import Backplane
from relay.dms import DirectMessages
from relay.frames import PLAIN_HELP, fields_problem, is_int, plain_command, strip_line_break
from relay.identities import CID_TTL, NAME_GRACE, REVOKED, AccountRequests, Identities
from relay.metrics import Metrics
from relay.model import (
    STORE_DOWN,
    BadRequest,
    Client,
    Limits,
    Outgoing,
    Refused,
    Room,
    User,
    plain,
    text_field,
    text_problem,
)
from relay.names import name_problem
from relay.owners import OwnerActions
from relay.ratelimit import AddressBuckets
from relay.remote import RemoteHooks
from relay.store import Store, StoreUnavailable
from relay.tokens import TokenSigner
from shared import protocol as p
from shared.protocol import Event

# What other modules import from here (relay.model's classes are re-exported).
__all__ = [
    "NAME_GRACE",
    "STORE_DOWN",
    "Client",
    "Hub",
    "Limits",
    "Outgoing",
    "PostError",
    "Room",
    "User",
]

log = logging.getLogger("relay.core")

CID_MAX = 64
READ_COST = 0.2  # of a message's rate budget
CID_KEEP = 256

T = TypeVar("T")
Offload = Callable[[Callable[[], Any], Callable[[Any], None]], None]
Handler = Callable[[Client, Event], None]


class Hub(RemoteHooks):
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
        self.backplane = backplane = backplane or Backplane()
        self.signer = signer
        self.limits = limits = limits or Limits()
        self.clock = clock
        self.registry = registry = registry or SQLiteRegistry(None)
        # What the store or the registry raises when it cannot be asked now: refuse the joiner.
        self._unreachable: tuple[type[Exception], ...] = (StoreUnavailable, *registry.unavailable)
        # Runs slow work (password hashing) and hands its result back on the hub's thread;
        # the WebSocket layer replaces it with a worker thread.
        self.offload: Offload = _inline
        self.metrics = Metrics()
        self.rooms: dict[str, Room] = {}
        self.clients: set[Client] = set()
        self._answering: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._addresses = AddressBuckets(
            limits.rate * 10 if limits.address_rate is None else limits.address_rate,
            limits.burst * 10 if limits.address_burst is None else limits.address_burst,
        )
        self._id_prefix = secrets.token_hex(4)
        self.identities = identities = Identities(
            store, registry, signer, backplane, limits, clock, name_grace, token_ttl
        )
        self.dms = dms = DirectMessages(
            store, identities, backplane, limits, self.metrics, self.deliver_all, self._next_id
        )
        owners = OwnerActions(store, registry, identities, backplane, limits, self)
        accounts = AccountRequests(identities, registry, backplane, self)
        self._handlers: dict[str, Handler] = {
            "say": self._on_say,
            "nick": accounts.on_nick,
            "dm": dms.on_dm,
            "dm_accept": dms.on_answer,
            "dm_decline": dms.on_answer,
            "who": self._on_who,
            "history": self._on_history,
            "read": self._on_read,
            "topic": owners.on_topic,
            "kick": owners.on_kick,
            "close": owners.on_close,
            "register": accounts.on_register,
            "private": owners.on_private,
            "invite": owners.on_invite,
            "remove": owners.on_remove,
            "owner": owners.on_owner,
            "logout_everywhere": accounts.on_logout_everywhere,
        }

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
        user = self.identities.login(token)
        generation = self.registry.generation(user.subject)
        room = self.rooms.get(room_name)
        if room is not None and self.backplane.ordered:
            self._catch_up(room)
            # A room whose history began anew was closed by the catch-up: start it afresh.
            room = self.rooms.get(room_name)
        if room is None:
            # Everything the store must answer comes before any change here: when it cannot
            # answer (StoreUnavailable), the joiner is refused and nothing is left behind.
            room_epoch, room_seq = self.store.room(room_name)
            if self.store.owner(room_name) is None:
                self.store.set_owner(room_name, user.subject)
            room = self.rooms[room_name] = Room(room_name, room_epoch, room_seq)
            members = self.backplane.members(room_name)
            room.told = None if members is None else set(members)
            self.backplane.open_room(room_name)
        client.user = user
        client.room = room
        client.generation = generation
        self.clients.add(client)
        self.metrics.connections_total += 1
        try:
            if client.json:
                self._welcome(client, room, backlog, since, epoch)
            self.dms.deliver_waiting(client, first=not user.clients)
        except self._unreachable:
            client.room = None
            self.clients.discard(client)
            self._forget_room_if_empty(room)
            self.identities.logout_if_gone(user)
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
            self.fanout(room, joined)
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

    # What the HTTP layer asks about tokens and rooms (relay.identities decides).

    def issue_token(self, subject: str, name: str) -> str:
        return self.identities.issue_token(subject, name)

    def refusal(self, token: str | None, room: str | None = None) -> str | None:
        return self.identities.refusal(token, room)

    def subject_for(self, token: str | None) -> str | None:
        return self.identities.subject_for(token)

    def may_enter(self, room: str, subject: str | None) -> bool:
        return self.identities.may_enter(room, subject)

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
                self.fanout(room, Outgoing(left, f"{user.name} :: left the chat"))
        self._forget_room_if_empty(room)
        self.identities.logout_if_gone(user)

    def _forget_room_if_empty(self, room: Room) -> None:
        if room.clients or self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        self.backplane.close_room(room.name)
        # Only housekeeping: an empty room left behind is released on its next use.
        with contextlib.suppress(StoreUnavailable):
            self.store.release(room.name)

    # -- frames from clients ------------------------------------------------------------------

    def receive(self, client: Client, text: str) -> None:
        """Handle one text frame: every hub state change starts here, so none interleave."""
        if client.room is None:
            return
        if not client.json:
            if self._admit(client):
                try:
                    self._plain_line(client, strip_line_break(text))
                except StoreUnavailable:
                    self._error(client, p.UNAVAILABLE, STORE_DOWN)
            return
        try:
            request = p.parse(text)
        except ValueError:
            request = None
        kind = request.get("type") if isinstance(request, dict) else None
        problem = fields_problem(request) if isinstance(request, dict) else None
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
            if kind == "read" and is_int(request.get("seq")):
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

    def _handle(self, client: Client, handler: Handler, request: Event) -> None:
        try:
            handler(client, request)
        except Refused as refused:
            self._error(client, refused.code, refused.detail)

    def _plain_line(self, client: Client, text: str) -> None:
        """A plain client's line: a message, or one of the commands a bare client needs.

        `//text` posts `/text` (the IRC convention); any other line starting with `/` is a
        command, so a typo is answered with an error instead of being posted to the room.
        """
        if not text.startswith("/") or text.startswith("//"):
            self._say(client, text[1:] if text.startswith("//") else text, None)
            return
        name, request = plain_command(text)
        problem = None if request is None else fields_problem(request)
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
        if client.user.bucket.take(now, cost) and self._addresses.take(client.address, now, cost):
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

    def _on_say(self, client: Client, request: Event) -> None:
        cid = request.get("cid")
        if cid is not None and not (isinstance(cid, str) and 0 < len(cid) <= CID_MAX):
            raise BadRequest(f"'cid' must be a string of 1-{CID_MAX} characters")
        self._say(client, text_field(request, "text"), cid)

    def _say(self, client: Client, text: str, cid: str | None) -> None:
        room, user = client.room, client.user
        assert room is not None and user is not None
        if not self._text_ok(client, text):
            return
        if cid is not None:
            sent = self._recent_cid(user, cid)
            if sent is not None:
                # Not numbered yet (submitted this moment): its echo is already on its way.
                if sent["seq"]:
                    self._send(client, Outgoing(sent, None))
                return
        if self._store_down(client):
            return
        line = plain(f"{user.name} :: ", text)
        message = self._draft(room.name, user.name, text, cid=cid)
        # Only a backplane that orders messages takes them: nothing more per message without one.
        ordered = self.backplane.ordered
        if ordered and self.backplane.submit(room.name, message, line, self._refusal(client, cid)):
            # Numbered later, with the other messages of this loop pass; its echo comes
            # back from the shared store like everyone else's.
            self.metrics.messages_in += 1
        else:
            message = self._numbered(room.name, message, line)
        if cid is not None:
            user.cids[cid] = (self.clock(), message)
        if not ordered:
            self._fanout_local(room, Outgoing(message, line))

    def _refusal(self, client: Client, cid: str | None) -> Callable[[str], None]:
        """What to tell the sender if its submitted message could not be kept after all."""
        answering = dict(self._answering)

        def refused(reason: str) -> None:
            user = client.user
            if cid is not None and user is not None:
                user.cids.pop(cid, None)
            if client.room is None:
                return
            self._answering = answering
            try:
                self._error(client, p.UNAVAILABLE, STORE_DOWN)
            finally:
                self._answering = {}

        return refused

    def _message(self, room: str, sender: str, text: str, plain: str, **extra: str | None) -> Event:
        """A new room message, numbered and kept in the room's history; None extras are left out."""
        return self._numbered(room, self._draft(room, sender, text, **extra), plain)

    def _numbered(self, room: str, message: Event, plain: str) -> Event:
        message = self.store.add(room, message, plain)
        self.metrics.messages_in += 1
        return message

    def _draft(self, room: str, sender: str, text: str, **extra: str | None) -> Event:
        """A new room message, not numbered yet; None extras are left out."""
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

    def _text_ok(self, client: Client, text: str) -> bool:
        problem = text_problem(text, self.limits.max_message_bytes)
        if problem is not None:
            self._error(client, *problem)
        return problem is None

    # -- accounts (AccountRequests and the HTTP login ask these of the hub) ----------------------

    def add_account(self, account: Account) -> str | None:
        """Keep a freshly hashed account; why not when something changed while hashing."""
        problem = self.identities.add_account(account)
        current = self.identities.users.get(account.subject)
        if problem is None and current is not None:
            token = self.issue_token(account.subject, account.name)
            event = {"type": "registered", "name": account.name, "token": token}
            self.deliver_all(current.clients, Outgoing(event, None))
        return problem

    def answer_later(
        self, client: Client, work: Callable[[], T], done: Callable[[T], None]
    ) -> None:
        """Run `work` off the hub's thread; `done`, given its result, answers the request in hand.

        A `Refused` from `done` becomes the error reply, if the client is still connected.
        """
        answering = self._answering

        def finish(result: T) -> None:
            self._answering = answering
            try:
                done(result)
            except Refused as refused:
                if client.room is not None:
                    self._error(client, refused.code, refused.detail)
            finally:
                self._answering = {}

        self.offload(work, finish)

    def cut_revoked(self) -> int:
        """Close the connections of identities revoked by `chat-relay tokens revoke`; how many.

        That command writes accounts.db from another process, so nothing here hears of it:
        the app layer calls this every few seconds. Nothing is read while the file is
        unchanged; after a change, one lookup per connected identity.
        """
        if not self.registry.changed_elsewhere():
            return 0
        cut = 0
        for user in list(self.identities.users.values()):
            generation = self.registry.generation(user.subject)
            for connection in [c for c in user.clients if c.generation < generation]:
                self.leave(connection)
                connection.close(p.CLOSE_POLICY, REVOKED, flush=True)
                cut += 1
        return cut

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
        if before is not None and not is_int(before):
            raise BadRequest("'before' must be an integer seq")
        if not is_int(limit) or limit < 1:
            raise BadRequest("'limit' must be a positive integer")
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
        if not is_int(seq) or seq < 0:
            raise BadRequest("'seq' must be a non-negative integer")
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
        self.deliver_all(told, Outgoing(event, None))
        self.backplane.publish_room(room.name, event, None, to=sorted(authors | {user.name}))

    def owner_name(self, room: str) -> str | None:
        subject = self.store.owner(room)
        return None if subject is None else self.store.identity_name(subject)

    # -- HTTP -----------------------------------------------------------------------------------

    def post(self, room_name: str, sender: str, text: str, address: str = "") -> Event:
        """A message posted over HTTP by a script or bot; raises `PostError` when refused."""
        if not self._addresses.take(address, self.clock()):
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
        if self.identities.taken_by_user(sender):
            raise PostError(p.NAME_TAKEN, f"{sender} is a user's name (or looks like one)")
        refused = text_problem(text, self.limits.max_message_bytes)
        if refused is not None:
            raise PostError(*refused)
        if self.store.problem() is not None:
            raise PostError(p.UNAVAILABLE, STORE_DOWN)
        line = plain(f"{sender} (via http) :: ", text)
        message = self._message(room_name, sender, text, line, via="http")
        room = self.rooms.get(room_name)
        if room is not None and not self.backplane.ordered:
            self._fanout_local(room, Outgoing(message, line))
        return message

    def announce(self, text: str) -> tuple[Event, int]:
        """An operator's notice to every live room; raises `PostError` when refused.

        Not a room message: it takes no seq and is kept nowhere, so it reaches who is connected
        now. The event and the number of rooms it went to are returned.
        """
        problem = text_problem(text, self.limits.max_message_bytes)
        if problem is not None:
            raise PostError(*problem)
        notice: Event = {"type": "announce", "id": self._next_id(), "ts": p.now_rfc3339()}
        rooms = self._announce_here({**notice, "text": text})
        self.backplane.publish_all({**notice, "text": text}, None)
        everywhere = self.backplane.rooms()
        return {**notice, "text": text}, rooms if everywhere is None else len(everywhere)

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

    def fanout(self, room: Room, event: Outgoing) -> None:
        """A room event (not a message) to the room's members here and on every other node."""
        self._fanout_local(room, event)
        self.backplane.publish_room(room.name, event.data, event.plain)

    def _fanout_local(self, room: Room, event: Outgoing) -> None:
        members = len(room.clients)
        self.metrics.messages_out += members - self.deliver_all(room.clients, event)

    def deliver_all(self, clients: Iterable[Client], event: Outgoing) -> int:
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
        self.deliver_all((client,), event)

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
        return len(self.identities.users)

    def close_room(self, room: Room, reason: str) -> None:
        """Close every connection of this node in the room (its owner closed it)."""
        # Dropping a slow member while telling them can already have forgotten the room.
        self.rooms.pop(room.name, None)
        self.backplane.close_room(room.name)
        for member in list(room.clients):
            member.room = None
            self.clients.discard(member)
            assert member.user is not None
            member.user.clients.discard(member)
            if room.users.pop(member.user, None) is not None:
                self.backplane.left(room.name, member.user.name)
            self.identities.logout_if_gone(member.user)
            member.close(p.CLOSE_ROOM_CLOSED, reason, flush=True)

    def close_member(self, room: Room, name: str, reason: str) -> None:
        """Close this node's connections of `name` in the room (kicked or removed)."""
        target = self.identities.online(name)
        for gone in [c for c in target.clients if c.room is room] if target else []:
            self.leave(gone)
            gone.close(p.CLOSE_KICKED, reason, flush=True)

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
