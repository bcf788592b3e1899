"""What a room's owner may do: topic, kick, close, invite-only membership, handing over.

Plain Python, no sockets. The hub dispatches these requests here; what they change in a room's
connections (an event to its members, a connection closed) goes back through the hub, which
alone holds the rooms' members on this node.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from relay.accounts import Registry
from relay.cluster import Backplane
from relay.identities import Identities
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
from relay.names import key
from relay.store import Store
from shared import protocol as p
from shared.protocol import Event


class RoomControl(Protocol):
    """What owner actions ask of the hub: tell a room, reach connections, close them."""

    def fanout(self, room: Room, event: Outgoing) -> None: ...

    def deliver_all(self, clients: Iterable[Client], event: Outgoing) -> int: ...

    def close_room(self, room: Room, reason: str) -> None: ...

    def close_member(self, room: Room, name: str, reason: str) -> None: ...


class OwnerActions:
    """The owner's requests; each raises `Refused` when its sender may not make it."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        identities: Identities,
        backplane: Backplane,
        limits: Limits,
        hub: RoomControl,
    ) -> None:
        self.store = store
        self.registry = registry
        self.identities = identities
        self.backplane = backplane
        self.limits = limits
        self.hub = hub

    def _owner(self, client: Client) -> tuple[Room, User]:
        """The client's room and user, when the user owns the room."""
        room, user = client.room, client.user
        assert room is not None and user is not None
        if self.store.owner(room.name) != user.subject:
            raise Refused(p.NOT_OWNER, "only the room's owner can do that")
        return room, user

    def on_topic(self, client: Client, request: Event) -> None:
        topic = text_field(request, "text")
        room, user = self._owner(client)
        problem = text_problem(topic, self.limits.max_message_bytes, allow_empty=True)
        if problem is not None:
            raise Refused(*problem)
        if self.store.problem() is not None:
            raise Refused(p.UNAVAILABLE, STORE_DOWN)
        self.store.set_topic(room.name, topic)
        ts = p.now_rfc3339()
        event = {"type": "topic", "room": room.name, "topic": topic, "by": user.name, "ts": ts}
        line = plain(f"{user.name} :: ", topic, first="set the topic: ")
        self.hub.fanout(room, Outgoing(event, line))

    def on_kick(self, client: Client, request: Event) -> None:
        name = text_field(request, "name")
        room, user = self._owner(client)
        target = self.identities.online(name)
        if target is not None and target in room.users:
            name = target.name
        else:
            elsewhere = self.backplane.members(room.name) or []
            found = [member for member in elsewhere if key(member) == key(name)]
            if not found:
                raise Refused(p.NO_SUCH_USER, f"nobody called {name} is in this room")
            name = found[0]
        subject = target.subject if target is not None else self.store.subject_of(name)
        if subject is not None:
            # In an invite-only room a kick also takes the membership away: a ban, not a timeout.
            self.registry.remove_member(room.name, subject)
        ts = p.now_rfc3339()
        event = {"type": "kick", "room": room.name, "name": name, "by": user.name, "ts": ts}
        self.hub.fanout(room, Outgoing(event, f"{name} :: was kicked by {user.name}"))
        self.hub.close_member(room, name, f"kicked by {user.name}")

    def on_close(self, client: Client, request: Event) -> None:
        room, user = self._owner(client)
        event = {"type": "closed", "room": room.name, "by": user.name, "ts": p.now_rfc3339()}
        # Forgotten first: a member of another node who rejoins when told must find it new.
        self.store.delete_room(room.name)
        self.store.release(room.name)
        self.hub.fanout(room, Outgoing(event, f"{user.name} :: closed the room"))
        self.hub.close_room(room, f"room closed by {user.name}")
        self.registry.set_private(room.name, False, set())

    def on_private(self, client: Client, request: Event) -> None:
        private = request.get("private")
        if not isinstance(private, bool):
            raise BadRequest("'private' must be true or false")
        room, user = self._owner(client)
        # Whoever is in the room when it closes its doors stays in.
        self.registry.set_private(room.name, private, {member.subject for member in room.users})
        what = "made the room invite-only" if private else "opened the room to everyone"
        self._did(room, user, {"type": "private", "private": private}, f"{user.name} :: {what}")

    def _did(self, room: Room, owner: User, event: Event, line: str) -> Outgoing:
        """Tell the room what its owner changed: every such event names the room, who, when."""
        fields = {**event, "room": room.name, "by": owner.name, "ts": p.now_rfc3339()}
        outgoing = Outgoing(fields, line)
        self.hub.fanout(room, outgoing)
        return outgoing

    def _target(self, client: Client, request: Event) -> tuple[Room, User, str, str]:
        """The owner's room and user, and (subject, name) of the identity the request names."""
        name = text_field(request, "name")
        room, user = self._owner(client)
        subject = self.identities.subject_of(name)
        if subject is None:
            raise Refused(p.NO_SUCH_USER, f"nobody has ever been called {name}")
        return room, user, subject, self.identities.name_of(subject)

    def on_invite(self, client: Client, request: Event) -> None:
        room, user, subject, name = self._target(client, request)
        if not self.registry.is_private(room.name):
            raise BadRequest("the room is open to everyone; /private on first")
        self.registry.add_member(room.name, subject)
        outgoing = self._did(
            room, user, {"type": "invited", "name": name}, f"{name} :: was invited by {user.name}"
        )
        invitee = self.identities.users.get(subject)
        if invitee is not None:
            self.hub.deliver_all({c for c in invitee.clients if c.room is not room}, outgoing)

    def on_remove(self, client: Client, request: Event) -> None:
        room, user, subject, name = self._target(client, request)
        if not self.registry.is_private(room.name):
            raise BadRequest("the room is open to everyone: /kick instead")
        if subject == user.subject:
            raise BadRequest("the owner cannot remove itself; hand the room over first")
        self.registry.remove_member(room.name, subject)
        line = f"{name} :: was removed by {user.name}"
        self._did(room, user, {"type": "removed", "name": name}, line)
        self.hub.close_member(room, name, f"removed from #{room.name} by {user.name}")

    def on_owner(self, client: Client, request: Event) -> None:
        room, user, subject, name = self._target(client, request)
        if self.registry.is_private(room.name):
            self.registry.add_member(room.name, subject)
        self.store.set_owner(room.name, subject)
        self._did(room, user, {"type": "owner", "owner": name}, f"{name} :: now owns the room")
