"""What reaches the hub from other nodes through the backplane (relay.cluster).

Plain Python, no sockets. The backplane calls these hooks on the hub's thread; they hand what
other nodes sent to this node's members, keep each room's messages in the shared order, and
catch up from the shared store when a subscription missed something.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Protocol

from relay import model
from relay.cluster import Backplane
from relay.identities import Identities
from relay.model import Client, Outgoing, Room
from relay.store import Store, StoreUnavailable
from shared import protocol as p
from shared.protocol import Event


class HubSide(Protocol):
    """What the hooks use of the hub: its rooms and connections here, and how it tells them."""

    rooms: dict[str, Room]
    store: Store
    backplane: Backplane
    identities: Identities

    def leave(self, client: Client) -> None: ...

    def _fanout_local(self, room: Room, event: Outgoing) -> None: ...

    def deliver_all(self, clients: Iterable[Client], event: Outgoing) -> int: ...

    def close_member(self, room: Room, name: str, reason: str) -> None: ...

    def close_room(self, room: Room, reason: str) -> None: ...

    def _announce_here(self, notice: Event) -> int: ...

    def _catch_up(self, room: Room) -> bool: ...


class RemoteHooks:
    """Mixed into `Hub`: the entry points a backplane calls (`Backplane.start(hub)`)."""

    def remote_message(
        self: HubSide, room_name: str, message: Event, plain: str | None, encoded: str
    ) -> None:
        """A room message in the shared order: handed on once, in seq order, never twice."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        seq = message["seq"]
        if seq <= room.seq:
            return
        if seq > room.seq + 1:
            if not self._catch_up(room):
                # The store cannot say what was missed: hand on nothing past the gap now;
                # `resync` does, once the store answers again.
                return
            if seq <= room.seq:
                return
        room.seq = seq
        self._fanout_local(room, Outgoing(message, plain, encoded))

    def _catch_up(self: HubSide, room: Room) -> bool:
        """Hand on what the shared store has beyond what this node delivered in the room.

        Runs when the subscription missed something: it had not started yet, or it broke.
        A room whose history began anew (Redis came back empty) is closed here with 1012, so
        its clients join again and learn the new epoch. False: the store could not answer.
        """
        try:
            epoch, latest = self.store.room(room.name)
            if latest <= room.seq and epoch == room.epoch:
                return True
            missed = self.store.after(room.name, room.seq) if epoch == room.epoch else None
        except StoreUnavailable:
            return False
        if missed is None:
            for client in list(room.clients):
                self.leave(client)
                client.close(p.CLOSE_RESTART, "the room's history was reset: join again", True)
            return True
        for message in missed:
            room.seq = message["seq"]
            self._fanout_local(room, Outgoing(message, _message_plain(message)))
        return True

    def catch_up(self: HubSide, room_name: str) -> None:
        """The node hears the room now: hand on what was said and who came or went meanwhile."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        self._catch_up(room)
        told, room.told = room.told, None
        now = self.backplane.members(room.name)
        if told is None or now is None:
            return
        here = {user.name for user in room.users}
        ts = p.now_rfc3339()
        for kind, names in (("join", set(now) - told), ("leave", told - set(now))):
            for name in sorted(names - here):
                what = "joined" if kind == "join" else "left"
                event = {"type": kind, "room": room.name, "name": name, "ts": ts}
                self._fanout_local(room, Outgoing(event, f"{name} :: {what} the chat"))

    def present_again(self: HubSide) -> None:
        """This node's presence was lost (Redis away too long): its members join again.

        Locally they never left; the other nodes swept them and hear them come back.
        """
        for user in list(self.identities.users.values()):
            self.backplane.open_user(user.subject)
        # And what a failed call left listed (a leave during the outage) leaves now.
        here = {(room.name, user.name) for room in self.rooms.values() for user in room.users}
        for room_name, name in self.backplane.stale(here):
            if self.backplane.left(room_name, name):
                event = {"type": "leave", "room": room_name, "name": name, "ts": p.now_rfc3339()}
                self.backplane.publish_room(room_name, event, f"{name} :: left the chat")
        for room in list(self.rooms.values()):
            for user in list(room.users):
                if self.backplane.joined(room.name, user.name):
                    event = {"type": "join", "room": room.name, "name": user.name}
                    event["ts"] = p.now_rfc3339()
                    plain = f"{user.name} :: joined the chat"
                    self.backplane.publish_room(room.name, event, plain)

    def resync(self: HubSide) -> None:
        """The subscriptions are back after a break: deliver what was missed in every room."""
        for room in list(self.rooms.values()):
            self._catch_up(room)

    def remote_event(
        self: HubSide, room_name: str, event: Event, plain: str | None, to: list[str] | None
    ) -> None:
        """A room event from another node: to this node's members, with what it implies here."""
        room = self.rooms.get(room_name)
        if room is None:
            return
        kind = event.get("type")
        if to is not None:
            names = set(to)
            told = [c for c in room.clients if c.user is not None and c.user.name in names]
            self.deliver_all(told, Outgoing(event, plain))
            return
        self._fanout_local(room, Outgoing(event, plain))
        if kind in ("kick", "removed"):
            self.close_member(room, str(event.get("name")), f"{kind} by {event.get('by')}")
        elif kind == "closed":
            self.close_room(room, f"room closed by {event.get('by')}")

    def remote_user(
        self: HubSide, subject: str, event: Event, plain: str | None, sender: str | None = None
    ) -> None:
        """An event for an identity, sent on another node (a DM, a request, an answer)."""
        user = self.identities.users.get(subject)
        if user is not None:
            self.deliver_all(user.clients, Outgoing(event, plain))
        elif sender is not None and not self.backplane.online_elsewhere(subject):
            # The recipient left this node while its DM was on the way: keep it, as for
            # anyone offline, rather than drop what the sender was told was delivered.
            with contextlib.suppress(StoreUnavailable):
                self.store.hold_dm(subject, sender, event)

    def remote_all(self: HubSide, event: Event) -> None:
        """An announcement made on another node."""
        self._announce_here(event)


def _message_plain(message: Event) -> str:
    via = " (via http)" if message.get("via") == "http" else ""
    return model.plain(f"{message['from']}{via} :: ", message["text"])
