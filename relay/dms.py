"""Direct messages: consent between two identities, and the mailbox of those kept offline.

Plain Python, no sockets. A first DM to someone is held as a request until they accept; a DM
to someone offline is kept in the store and handed over, a page at a time, when they connect.
Delivery goes through the hub's `deliver` (which drops a connection that cannot keep up) and,
for identities on other nodes, through the backplane.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from relay.cluster import Backplane
from relay.identities import Identities
from relay.metrics import Metrics
from relay.model import (
    STORE_DOWN,
    BadRequest,
    Client,
    Limits,
    Outgoing,
    Refused,
    plain,
    text_field,
    text_problem,
)
from relay.store import Store
from shared import protocol as p
from shared.protocol import Event

# Kept DMs go out in pages of about this many characters as the socket takes them.
HELD_PAGE_CHARS = 64 * 1024

# DM consent between two identities, kept in the store.
PENDING = "pending"
ACCEPTED = "accepted"
DECLINED = "declined"

Deliver = Callable[[Iterable[Client], Outgoing], int]


class DirectMessages:
    """DM requests and their answers, delivery, and the offline mailbox, for one node."""

    def __init__(
        self,
        store: Store,
        identities: Identities,
        backplane: Backplane,
        limits: Limits,
        metrics: Metrics,
        deliver: Deliver,
        next_id: Callable[[], str],
    ) -> None:
        self.store = store
        self.identities = identities
        self.backplane = backplane
        self.limits = limits
        self.metrics = metrics
        self._deliver = deliver
        self._next_id = next_id

    def on_dm(self, client: Client, request: Event) -> None:
        """Deliver, keep or hold a DM; raises `Refused` when it cannot be taken."""
        sender = client.user
        assert sender is not None
        to, text = text_field(request, "to"), text_field(request, "text")
        subject = self.identities.subject_of(to)
        if subject is None:
            raise Refused(p.NO_SUCH_USER, f"nobody has ever been called {to}")
        problem = text_problem(text, self.limits.max_message_bytes)
        if problem is not None:
            raise Refused(*problem)
        recipient = self.identities.users.get(subject)
        event = {
            "type": "dm",
            "id": self._next_id(),
            "ts": p.now_rfc3339(),
            "from": sender.name,
            "to": self.identities.name_of(subject),
            "text": text,
        }
        self.metrics.dms += 1
        state = self._consent(sender.subject, subject)
        if state == DECLINED:
            raise Refused(p.DM_DECLINED, f"{event['to']} declined your messages")
        if state == ACCEPTED and (
            # Online here, or somewhere else (the other node delivers it).
            self.backplane.publish_user(subject, event, _dm(event).plain, sender.subject)
            or recipient is not None
        ):
            outgoing = _dm(event)
            self.to_user(sender.subject, outgoing, publish=subject != sender.subject)
            if recipient is not None:
                self._deliver(recipient.clients - sender.clients, outgoing)
            return
        if self.store.problem() is not None:
            raise Refused(p.UNAVAILABLE, STORE_DOWN)
        # Offline, or the recipient has not answered the request yet: keep it for them.
        self.store.hold_dm(subject, sender.subject, event)
        flag = "queued" if state == ACCEPTED else "held"
        self._deliver(sender.clients, _dm({**event, flag: True}))
        if state is None:
            self.store.set_dm_consent(sender.subject, subject, PENDING, sender.subject)
            self.to_user(subject, _dm_request(sender.name))

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

    def on_answer(self, client: Client, request: Event) -> None:
        """`dm_accept` or `dm_decline`: the answer to a pending request."""
        user = client.user
        assert user is not None
        name = text_field(request, "from")
        requester = self.identities.subject_of(name)
        if requester is None or self.store.dm_consent(user.subject, requester) != (
            PENDING,
            requester,
        ):
            raise BadRequest(f"no pending request from {name}")
        if request["type"] == "dm_accept":
            self._accept(user.subject, requester)
            return
        self.store.set_dm_consent(user.subject, requester, DECLINED, requester)
        self.store.drop_dms(user.subject, requester)
        answer = {"type": "dm_declined", "by": user.name}
        line = f"{user.name} -> you :: declined your private messages"
        self.to_user(requester, Outgoing(answer, line))

    def _accept(self, subject: str, requester: str) -> None:
        """`subject` accepts `requester`: release what was held and tell the requester."""
        self.store.set_dm_consent(subject, requester, ACCEPTED, requester)
        user = self.identities.users.get(subject)
        if user is not None:
            held = [event for sender, event in self.store.held_dms(subject) if sender == requester]
            for client in list(user.clients):
                self._drain_held(client, held)
        by = self.identities.name_of(subject)
        answer = {"type": "dm_accepted", "by": by}
        line = f"{by} -> you :: accepted your private messages"
        self.to_user(requester, Outgoing(answer, line))

    def deliver_waiting(self, client: Client, first: bool) -> None:
        """On connect: DM requests awaiting an answer, and (first connection) DMs kept offline."""
        user = client.user
        assert user is not None
        held = self.store.held_dms(user.subject)
        requests: list[Outgoing] = []
        accepted: set[str] = set()
        for requester in dict.fromkeys(sender for sender, _ in held):
            state = self.store.dm_consent(user.subject, requester)
            if state == (PENDING, requester):
                requests.append(_dm_request(self.identities.name_of(requester)))
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

    def to_user(self, subject: str, event: Outgoing, publish: bool = True) -> None:
        """An event for every connection of an identity, on this node and (`publish`) others."""
        user = self.identities.users.get(subject)
        if user is not None:
            self._deliver(user.clients, event)
        if publish:
            self.backplane.publish_user(subject, event.data, event.plain)


def _dm(event: Event) -> Outgoing:
    return Outgoing(event, plain(f"{event['from']} -> {event['to']} :: ", event["text"]))


def _dm_request(sender: str) -> Outgoing:
    request = {"type": "dm_request", "from": sender, "ts": p.now_rfc3339()}
    text = f"{sender} -> you :: wants to send you private messages (/accept {sender})"
    return Outgoing(request, text)
