"""How one node's hub reaches the members that other nodes hold.

The hub calls these methods synchronously and they never block for long; what comes back from
other nodes arrives through the hub's `remote_*` methods. `Backplane` itself is the node alone
(the default): nobody else to tell, so every call is a no-op and rooms are ordered locally.
`relay.redis_backplane` is the drop-in for several nodes on one Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from shared.protocol import Event

if TYPE_CHECKING:
    from relay.core import Hub

# Called with the reason when a submitted message could not be kept.
Refusal = Callable[[str], None]


class Backplane:
    """The node alone: what it holds is all there is."""

    # True when room messages reach local members only through `Hub.remote_message`, in the
    # order the shared store numbered them (also the sender's own, so that every member of a
    # room sees one order on every node).
    ordered = False
    node = "local"

    def start(self, hub: Hub) -> None:
        """Begin hearing other nodes (the server's loop is running now)."""

    async def stop(self) -> None:
        """Leave the other nodes, once this node's connections are closed."""

    def submit(self, room: str, message: Event, plain: str | None, refused: Refusal) -> bool:
        """Number, keep and publish `message` later, with others (one round trip for all).

        False: not done here; the hub adds it itself (`Store.add`). Otherwise `refused` is
        called if it could not be kept; when it was, it comes back like any other message.
        """
        return False

    def open_room(self, room: str) -> None:
        """The node has members in `room` now: hear what other nodes say there."""

    def close_room(self, room: str) -> None:
        """The node's last member of `room` left."""

    def open_user(self, subject: str) -> None:
        """An identity connected to this node: hear DMs and answers sent to it elsewhere."""

    def close_user(self, subject: str) -> None:
        """The identity's last connection to this node closed."""

    def publish_room(
        self, room: str, event: Event, plain: str | None, to: list[str] | None = None
    ) -> None:
        """Hand a room event (not a message) to the other nodes' members (`to`: only those)."""

    def publish_user(
        self, subject: str, event: Event, plain: str | None, sender: str | None = None
    ) -> bool:
        """Hand an event to the identity's connections on other nodes; True when it has some.

        `sender`: the event is a DM from that identity, which a node that no longer has the
        recipient keeps in its mailbox (it left while the DM was on its way).
        """
        return False

    def online_elsewhere(self, subject: str) -> bool:
        """Whether the identity is connected to some other node."""
        return False

    def publish_all(self, event: Event, plain: str | None) -> None:
        """Hand an event to every room on the other nodes (announcements)."""

    def joined(self, room: str, name: str) -> bool:
        """`name` is now in `room` on this node; True when it was in it on no node before."""
        return True

    def left(self, room: str, name: str) -> bool:
        """`name` left `room` on this node; True when it is now in it on no node."""
        return True

    def stale(self, here: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """The (room, name) this node is listed with elsewhere but no longer has (`here`)."""
        return []

    def members(self, room: str) -> list[str] | None:
        """Every name in `room` on any node, or None when this node's own are all there are."""
        return None

    def rooms(self) -> dict[str, int] | None:
        """Every room with members on any node, and how many names, or None: this node's only."""
        return None

    def problem(self) -> str | None:
        """Why other nodes cannot be reached now, or None."""
        return None

    def metrics(self) -> str:
        """Prometheus lines about the backplane for /metrics (none for a node alone)."""
        return ""
