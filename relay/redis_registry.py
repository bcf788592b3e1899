"""Accounts, token generations and invite-only rooms in Redis, shared by every relay node.

With several relays as one (`chat-relay serve --redis URL`) a name registered on one node is
a login on every node, a revocation on any node (or by `chat-relay tokens revoke --redis`)
refuses the tokens everywhere, and an invite-only room admits the same members on every node.

redis-py's synchronous client: the hub is plain synchronous code, and these calls are as
rare as SQLite's (a login, a registration, a join, an owner's change), never per message,
each a round trip or two to a nearby Redis. Only this module imports redis, so a relay
installed without the `redis` extra runs as before.

Keys (all under `chat:`):
- `chat:acct:{subject}`: hash of name, salt and hash (hex) of a registered identity;
- `chat:acctname:{namekey}`: the subject owning a name and its look-alikes (relay.names.key);
- `chat:gen:{subject}`: the identity's token generation (absent: 0);
- `chat:registry:version`: bumped by every revocation, so nodes notice without reading more;
- `chat:private`: set of invite-only rooms; `chat:members:{room}`: set of their member subjects;
- `chat:secret`: the token signing secret every node shares (`shared_secret`).
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

import redis

from relay.accounts import Account, NameTaken, Registry
from relay.names import key

PREFIX = "chat:"
VERSION = PREFIX + "registry:version"
PRIVATE = PREFIX + "private"
SECRET = PREFIX + "secret"
TIMEOUT = 1.0
# After Redis timed out or refused, how long lookups fail at once instead of each blocking
# the hub for up to TIMEOUT: while Redis hangs, the hub stalls at most once per HOLD.
HOLD = 2.0

# Name and identity claimed in one step, so two nodes registering one name at once cannot
# both win (the hub checks first, but on another node the check and the write are apart).
_ADD = """
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
redis.call('SET', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'salt', ARGV[3], 'hash', ARGV[4])
return 1
"""


def connect(url: str) -> redis.Redis:
    """A client that gives up within a second, so a lost Redis cannot hang the hub for long."""
    return redis.Redis.from_url(
        url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
    )


def shared_secret(url: str) -> bytes:
    """The token signing secret of every node on this Redis: the first node's random one.

    SET NX makes one node's secret the secret, however many start at once.
    """
    client = connect(url)
    try:
        client.set(SECRET, secrets.token_hex(32), nx=True)
        secret = client.get(SECRET)
    finally:
        client.close()
    if not isinstance(secret, str) or not secret:
        raise redis.RedisError(f"{SECRET} is empty")
    return secret.encode()


class RedisDown(redis.ConnectionError):
    """Redis failed a moment ago: not asked again until HOLD has passed."""


P = ParamSpec("P")
R = TypeVar("R")


def _guarded(
    method: Callable[Concatenate[RedisRegistry, P], R],
) -> Callable[Concatenate[RedisRegistry, P], R]:
    @functools.wraps(method)
    def call(self: RedisRegistry, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if time.monotonic() < self._down_until:
            raise RedisDown(self._down_reason)
        try:
            return method(self, *args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._down_until = time.monotonic() + HOLD
            self._down_reason = f"{error} (not asked again for {HOLD:g} s)"
            raise

    return call


def _text(value: bytes | str) -> str:
    """A reply as text: redis-py's types allow bytes, which this client (decode_responses)
    never returns."""
    return value if isinstance(value, str) else value.decode()


def _account_key(subject: str) -> str:
    return f"{PREFIX}acct:{subject}"


def _name_key(name: str) -> str:
    return f"{PREFIX}acctname:{key(name)}"


def _generation_key(subject: str) -> str:
    return f"{PREFIX}gen:{subject}"


def _members_key(room: str) -> str:
    return f"{PREFIX}members:{room}"


class RedisRegistry(Registry):
    """The registry of every node sharing the Redis at `url`."""

    unavailable = (redis.RedisError,)

    def __init__(self, url: str) -> None:
        self.redis = connect(url)
        self._down_until = 0.0
        self._down_reason = ""
        self._add = self.redis.register_script(_ADD)
        self._seen = self._version()

    def problem(self) -> str | None:
        if time.monotonic() < self._down_until:
            return f"accounts: {self._down_reason}"
        return None

    def _version(self) -> int:
        return int(self.redis.get(VERSION) or 0)

    @_guarded
    def changed_elsewhere(self) -> bool:
        """Whether anyone else revoked tokens since last asked: one GET while nobody does."""
        version = self._version()
        changed, self._seen = version != self._seen, version
        return changed

    @_guarded
    def account(self, subject: str) -> Account | None:
        fields = self.redis.hgetall(_account_key(subject))
        if not fields:
            return None
        name, salt, digest = (_text(fields[field]) for field in ("name", "salt", "hash"))
        return Account(subject, name, bytes.fromhex(salt), bytes.fromhex(digest))

    @_guarded
    def account_named(self, name: str) -> Account | None:
        subject = self.redis.get(_name_key(name))
        return None if not isinstance(subject, str) else self.account(subject)

    @_guarded
    def add(self, account: Account) -> None:
        keys = [_account_key(account.subject), _name_key(account.name)]
        values = [account.subject, account.name, account.salt.hex(), account.hash.hex()]
        if not self._add(keys=keys, args=values):
            raise NameTaken(account.name)

    @_guarded
    def generation(self, subject: str) -> int:
        return int(self.redis.get(_generation_key(subject)) or 0)

    @_guarded
    def revoke(self, subject: str) -> int:
        pipe = self.redis.pipeline()
        pipe.incr(_generation_key(subject))
        pipe.incr(VERSION)
        generation, version = pipe.execute()
        # This node's own revocation is no news to it, unless another came in between.
        if version == self._seen + 1:
            self._seen = version
        return int(generation)

    @_guarded
    def is_private(self, room: str) -> bool:
        return bool(self.redis.sismember(PRIVATE, room))

    @_guarded
    def set_private(self, room: str, private: bool, members: set[str]) -> None:
        pipe = self.redis.pipeline()
        pipe.delete(_members_key(room))
        if private:
            pipe.sadd(PRIVATE, room)
            if members:
                pipe.sadd(_members_key(room), *members)
        else:
            pipe.srem(PRIVATE, room)
        pipe.execute()

    @_guarded
    def is_member(self, room: str, subject: str) -> bool:
        return bool(self.redis.sismember(_members_key(room), subject))

    @_guarded
    def add_member(self, room: str, subject: str) -> None:
        self.redis.sadd(_members_key(room), subject)

    @_guarded
    def remove_member(self, room: str, subject: str) -> None:
        self.redis.srem(_members_key(room), subject)

    @_guarded
    def readable(self, rooms: list[str], subject: str | None) -> set[str]:
        listed = set(rooms)
        hidden = {_text(room) for room in self.redis.smembers(PRIVATE)} & listed
        if subject is not None and hidden:
            ordered = sorted(hidden)
            pipe = self.redis.pipeline(transaction=False)
            for room in ordered:
                pipe.sismember(_members_key(room), subject)
            hidden -= {room for room, member in zip(ordered, pipe.execute(), strict=True) if member}
        return listed - hidden

    def close(self) -> None:
        self.redis.close()
