"""Who is who: identities, their names, tokens and accounts. Plain Python, no sockets.

The hub asks this for a connection's `User` on join and hands it back when the last connection
goes; everything about names (unique, reserved for a grace period after logout, registered for
good) and tokens (issued, expired, revoked) is decided here. Nothing here sends events: the
hub tells rooms and connections what changed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from coolname import generate_slug

from relay.accounts import Account, NameTaken, Registry, new_account, password_problem
from relay.cluster import Backplane
from relay.model import Client, Limits, Outgoing, Refused, Room, User, text_field
from relay.names import key, name_problem
from relay.ratelimit import TokenBucket
from relay.store import Store, StoreUnavailable
from relay.tokens import Claims, TokenSigner, new_subject
from shared import protocol as p
from shared.protocol import Event

CID_TTL = 300.0
# How long an unregistered identity keeps its name after its last connection closes.
NAME_GRACE = 30 * 86400.0
REVOKED = "token revoked: log in again"

T = TypeVar("T")


class Identities:
    """The identities online on this node, and the names every identity holds."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        signer: TokenSigner,
        backplane: Backplane,
        limits: Limits,
        clock: Callable[[], float],
        name_grace: float = NAME_GRACE,
        token_ttl: float = 0.0,
    ) -> None:
        self.store = store
        self.registry = registry
        self.signer = signer
        self.backplane = backplane
        self.limits = limits
        self.clock = clock
        self.name_grace = name_grace
        self.token_ttl = token_ttl
        # Online identities, by subject and by name key.
        self.users: dict[str, User] = {}
        self.names: dict[str, User] = {}
        self._parked_cids: dict[str, tuple[float, dict[str, tuple[float, Event]]]] = {}
        # When identities that hold a name went offline, in that order; an identity not here
        # is taken to have left when the relay started (names survive restarts for a grace).
        self._left_at: dict[str, float] = {}
        self._started = clock()

    # -- tokens ---------------------------------------------------------------------------------

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

    def revoked(self) -> list[Client]:
        """Connections whose tokens `chat-relay tokens revoke` revoked from another process.

        Nothing is read while accounts.db is unchanged; after a change, one lookup per
        connected identity.
        """
        if not self.registry.changed_elsewhere():
            return []
        revoked: list[Client] = []
        for user in list(self.users.values()):
            generation = self.registry.generation(user.subject)
            revoked += [c for c in user.clients if c.generation < generation]
        return revoked

    # -- logging in and out ---------------------------------------------------------------------

    def login(self, token: str | None) -> User:
        claims = self.signer.claims(token) if token else None
        if claims is not None and self._expired(claims.issued):
            claims = None
        if claims is not None:
            subject, token_name = claims.subject, claims.name
            user = self.users.get(subject)
            if user is not None:
                return user
            account = self.registry.account(subject)
            name = self.store.identity_name(subject) or token_name
            if account is not None:
                name = account.name
            # Another identity may have taken the name (after the grace period) while this one
            # was away: the store's name→identity row decides, so one name is one identity.
            holder = self.names.get(key(name))
            owner = self.store.subject_of(name)
            registered = self.registry.account_named(name)
            if account is None and (
                name_problem(name) is not None
                or (holder is not None and holder.subject != subject)
                or owner not in (None, subject)
                or registered is not None
            ):
                name = self.fresh_name()
        else:
            subject, name = new_subject(), self.fresh_name()
        # Before anything is registered here: a store that cannot take it refuses the login.
        self.store.set_identity_name(subject, name)
        user = User(subject, name, TokenBucket(self.limits.rate, self.limits.burst, self.clock()))
        parked = self._parked_cids.pop(subject, None)
        if parked is not None:
            user.cids = parked[1]
        self._left_at.pop(subject, None)
        self.users[subject] = user
        self.names[key(name)] = user
        self.backplane.open_user(subject)
        return user

    def logout_if_gone(self, user: User) -> None:
        if user.clients:
            return
        self.users.pop(user.subject, None)
        if self.names.get(key(user.name)) is user:
            del self.names[key(user.name)]
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

    # -- names ----------------------------------------------------------------------------------

    def fresh_name(self) -> str:
        """A random name nobody known to the store has, online or not."""
        while True:
            name = generate_slug(2)
            fresh = name_problem(name) is None and key(name) not in self.names
            unknown = fresh and self.store.subject_of(name) is None
            if unknown and self.registry.account_named(name) is None:
                return name

    def reserved_for_other(self, name: str, subject: str) -> bool:
        """Whether `name` (or a look-alike) belongs to another identity than `subject`.

        A name is its identity's while it is connected and for `name_grace` after; later
        another identity may take it, and the old one gets a fresh name when it returns.
        A registered name is its identity's for good.
        """
        return self._reserved(name, subject, self.store.subject_of(name))

    def _reserved(self, name: str, subject: str, owner: str | None) -> bool:
        """`reserved_for_other`, given the identity the store says holds the name."""
        account = self.registry.account_named(name)
        if account is not None:
            return account.subject != subject
        holder = self.names.get(key(name))
        if holder is not None:
            return holder.subject != subject
        if owner is None or owner == subject:
            return False
        return self.clock() - self._left_at.get(owner, self._started) < self.name_grace

    def rename(self, user: User, new: str) -> bool:
        """Give `user` the name `new`; False when it already has it. Raises `Refused`."""
        if self.registry.account(user.subject) is not None:
            raise Refused(p.REGISTERED, "a registered name is your login: it cannot change")
        problem = name_problem(new)
        if problem is not None:
            raise Refused(p.BAD_NAME, problem)
        taken = f"{new} is already taken (or looks like a name that is)"
        owner = self.store.subject_of(new)
        if self._reserved(new, user.subject, owner):
            raise Refused(p.NAME_TAKEN, taken)
        if new == user.name:
            return False
        # Another relay on the same store may have given the name away since `owner` was read.
        if not self.store.claim_name(user.subject, new, owner):
            raise Refused(p.NAME_TAKEN, taken)
        del self.names[key(user.name)]
        self.names[key(new)] = user
        user.name = new
        return True

    def online(self, name: str) -> User | None:
        """The identity connected here under `name` or a look-alike of it."""
        return self.names.get(key(name))

    def subject_of(self, name: str) -> str | None:
        user = self.names.get(key(name))
        return user.subject if user is not None else self.store.subject_of(name)

    def name_of(self, subject: str) -> str:
        user = self.users.get(subject)
        if user is not None:
            return user.name
        return self.store.identity_name(subject) or subject

    def taken_by_user(self, name: str) -> bool:
        """Whether any identity, online or not, is called `name` or a look-alike of it."""
        taken = key(name) in self.names or self.store.subject_of(name) is not None
        return taken or self.registry.account_named(name) is not None

    # -- accounts -------------------------------------------------------------------------------

    def add_account(self, account: Account) -> str | None:
        """Keep a freshly hashed account; why not when something changed while hashing."""
        subject, current = account.subject, self.users.get(account.subject)
        name = current.name if current is not None else self.store.identity_name(subject)
        name = name or account.name
        if name != account.name:
            return f"you are called {name} now; register again"
        if current is None and (
            name_problem(name) is not None
            or self.reserved_for_other(name, subject)
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
        return None


class Connections(Protocol):
    """What an identity's requests ask of the hub: tell rooms, close connections, keep accounts."""

    def fanout(self, room: Room, event: Outgoing) -> None: ...

    def leave(self, client: Client) -> None: ...

    def add_account(self, account: Account) -> str | None: ...

    def answer_later(
        self, client: Client, work: Callable[[], T], done: Callable[[T], None]
    ) -> None: ...


class AccountRequests:
    """An identity's requests about itself: another name, an account, logging out everywhere.

    Each raises `Refused` when it cannot be done.
    """

    def __init__(
        self, identities: Identities, registry: Registry, backplane: Backplane, hub: Connections
    ) -> None:
        self.identities = identities
        self.registry = registry
        self.backplane = backplane
        self.hub = hub
        # Identities whose password is being hashed now.
        self._registering: set[str] = set()

    def on_nick(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        old, new = user.name, text_field(request, "name")
        if not self.identities.rename(user, new):
            return
        ts = p.now_rfc3339()
        for room in {c.room for c in list(user.clients) if c.room is not None}:
            self.backplane.left(room.name, old)
            self.backplane.joined(room.name, new)
            event = {"type": "nick", "room": room.name, "old": old, "new": new, "ts": ts}
            self.hub.fanout(room, Outgoing(event, f"{old} :: is now known as {new}"))

    def on_register(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        password = text_field(request, "password")
        problem = password_problem(password)
        if problem is not None:
            raise Refused(p.BAD_PASSWORD, problem)
        if self.registry.account(user.subject) is not None or user.subject in self._registering:
            raise Refused(p.REGISTERED, f"{user.name} is already registered")
        subject, name = user.subject, user.name
        # One hash at a time per identity: a client repeating `register` costs one, not many.
        self._registering.add(subject)

        def done(account: Account) -> None:
            self._registering.discard(subject)
            problem = self.hub.add_account(account)
            if problem is not None:
                raise Refused(p.NAME_TAKEN, problem)

        self.hub.answer_later(client, lambda: new_account(subject, name, password), done)

    def on_logout_everywhere(self, client: Client, request: Event) -> None:
        user = client.user
        assert user is not None
        if self.registry.account(user.subject) is None:
            raise Refused(p.NOT_REGISTERED, "register first: you could not log in again")
        self.registry.revoke(user.subject)
        for connection in list(user.clients):
            self.hub.leave(connection)
            connection.close(p.CLOSE_POLICY, "logged out everywhere: log in again", flush=True)
