"""Room history, names, owners and DMs in Redis, shared by every relay node that uses it.

What makes several nodes one relay is that a room's order is decided in one place: `add` runs
one script that takes the room's next seq, appends the message to the room's stream (bounded)
and publishes it on the room's channel, all in one step. Publishing inside the script puts
the channel's order and the seq order in agreement, so a node that hands on what its
subscription brings delivers every room in seq order without sorting anything.

Calls are synchronous, like SQLite's reads: the hub is plain Python that runs to completion,
and on a nearby Redis one round trip costs about what a page-cache read does. They are short
by construction (a socket timeout of `TIMEOUT`); when Redis cannot be reached the store says
so in `problem()` and refuses at once (`StoreUnavailable`) until `probe()` reaches it again,
so a dead Redis never makes every frame wait for a timeout.

Keys carry the room in a hash tag (`chat:{room}:…`), so one room's keys stay on one shard of
a Redis Cluster.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from relay.names import key
from relay.store import Store, StoreUnavailable
from shared import protocol as p
from shared.protocol import Event

TIMEOUT = 1.0
# A room that was only looked at is not created; its epoch is derived from its name, the
# cluster's salt and how many times it was closed, so every node reports the same one.
_EPOCH = """
local function epoch(meta, gen_key, salt, room)
  local e = redis.call('HGET', meta, 'epoch')
  if e then return e end
  local gen = redis.call('GET', gen_key) or '0'
  return string.sub(redis.sha1hex(salt .. '/' .. room .. '/' .. gen), 1, 12)
end
"""
# KEYS: meta, log, gen; ARGV: salt, room, history limit, message head, message tail,
# channel, plain line (JSON). Published: the message's JSON, a newline, the plain line's JSON
# (compact JSON has no raw newline), so a node hands the message's JSON on as it came.
# Returns {seq, epoch}.
ADD_SCRIPT = _ADD = (
    _EPOCH
    + """
local e = epoch(KEYS[1], KEYS[3], ARGV[1], ARGV[2])
redis.call('HSETNX', KEYS[1], 'epoch', e)
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], seq .. '-1', 'm', ARGV[4] .. seq .. ARGV[5])
redis.call('PUBLISH', ARGV[6], ARGV[4] .. seq .. ARGV[5] .. '\\n' .. ARGV[7])
return {seq, e}
"""
)
# KEYS: meta, log, gen; ARGV: salt, room, history limit, seq, message. Keeps a message numbered
# elsewhere (a demo's seeded history, a restore), published to nobody.
_APPEND = (
    _EPOCH
    + """
redis.call('HSETNX', KEYS[1], 'epoch', epoch(KEYS[1], KEYS[3], ARGV[1], ARGV[2]))
redis.call('HSET', KEYS[1], 'seq', ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], ARGV[4] .. '-1', 'm', ARGV[5])
"""
)
# KEYS: meta, gen; ARGV: salt, room. Returns {epoch, seq}.
_PEEK = (
    _EPOCH
    + """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
return {epoch(KEYS[1], KEYS[2], ARGV[1], ARGV[2]), seq}
"""
)
# KEYS: names, idnames, seen, chosen; ARGV: subject, name, name key, now, chosen.
# The same, for a chosen name, if the name's holder is still ARGV[6] ('' for nobody).
_CLAIM_CHECK = """
local current = redis.call('HGET', KEYS[1], ARGV[3])
if current and current ~= ARGV[1] and current ~= ARGV[6] then return 0 end
"""
_SET_NAME = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old and old ~= ARGV[2] then
  local old_key = cjson.decode(redis.call('HGET', KEYS[2], ARGV[1] .. '/key') or 'null')
  if old_key and redis.call('HGET', KEYS[1], old_key) == ARGV[1] then
    redis.call('HDEL', KEYS[1], old_key)
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2], ARGV[1] .. '/key', cjson.encode(ARGV[3]))
redis.call('HSET', KEYS[1], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if ARGV[5] == '1' then redis.call('SADD', KEYS[4], ARGV[1]) end
"""
# KEYS: seen, chosen, owners, names, idnames; ARGV: cutoff. Forgets up to 500 identities not seen
# since the cutoff that never chose a name, own no room and have no DMs waiting; the others
# leave `seen` (kept for good, until seen again). Returns how many were forgotten.
_FORGET = """
local forgotten = 0
for _, subject in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)) do
  redis.call('ZREM', KEYS[1], subject)
  local chosen = redis.call('SISMEMBER', KEYS[2], subject) == 1
  local owner = redis.call('SISMEMBER', KEYS[3], subject) == 1
  if not chosen and not owner and redis.call('EXISTS', 'chat:dms:' .. subject) == 0 then
    local old_key = cjson.decode(redis.call('HGET', KEYS[5], subject .. '/key') or 'null')
    if old_key and redis.call('HGET', KEYS[4], old_key) == subject then
      redis.call('HDEL', KEYS[4], old_key)
    end
    redis.call('HDEL', KEYS[5], subject, subject .. '/key')
    forgotten = forgotten + 1
  end
end
return forgotten
"""
# KEYS: meta, reads. Forgets a room that has nothing worth keeping (no message, no topic).
_RELEASE = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
if seq == 0 and redis.call('HEXISTS', KEYS[1], 'topic') == 0 then
  redis.call('DEL', KEYS[1], KEYS[2])
end
"""
# KEYS: the mailbox; ARGV: 'sender' or 'ids', then the sender or the ids. Keeps the others.
_FILTER_DMS = """
local kept = {}
local drop = {}
for i = 2, #ARGV do drop[ARGV[i]] = true end
for _, item in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local held = cjson.decode(item)
  local what = ARGV[1] == 'sender' and held[1] or held[2]['id']
  if not drop[what] then table.insert(kept, item) end
end
redis.call('DEL', KEYS[1])
for start = 1, #kept, 1000 do
  redis.call('RPUSH', KEYS[1], unpack(kept, start, math.min(start + 999, #kept)))
end
"""

log = logging.getLogger("relay.redis")
T = TypeVar("T")
# How every published message starts (and nothing else on a room's channel does).
MESSAGE_HEAD = '{"seq":'


def room_channel(room: str) -> str:
    return f"chat:{{{room}}}:events"


class RedisStore(Store):
    """The `Store` of a cluster of relay nodes; see the module docstring."""

    def __init__(
        self,
        url: str,
        history_limit: int = 1000,
        forget_days: float = 30.0,
        clock: Callable[[], float] = time.time,
        client: redis.Redis | None = None,
    ) -> None:
        self._redis = client or redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )
        self._limit = max(1, history_limit)
        self._forget_seconds = forget_days * 86400.0
        self._clock = clock
        self._problem: str | None = None
        self.failures = 0
        self._add = self._redis.register_script(_ADD)
        self._peek = self._redis.register_script(_PEEK)
        self._append = self._redis.register_script(_APPEND)
        self._set_name = self._redis.register_script(_SET_NAME)
        self._claim = self._redis.register_script(_CLAIM_CHECK + _SET_NAME + "return 1\n")
        self._filter_dms = self._redis.register_script(_FILTER_DMS)
        self._forget = self._redis.register_script(_FORGET)
        self._release = self._redis.register_script(_RELEASE)
        self._salt = self._call(self._load_salt)

    def _load_salt(self) -> str:
        self._redis.set("chat:salt", secrets.token_hex(8), nx=True)
        return str(self._redis.get("chat:salt"))

    # -- failure handling -----------------------------------------------------------------------

    def _call(self, work: Callable[[], T]) -> T:
        """Run `work` against Redis; a Redis that cannot be reached turns the store off.

        While off, nothing is tried: `probe` (the node's health loop) turns it on again.
        """
        if self._problem is not None:
            raise StoreUnavailable(self._problem)
        try:
            return work()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.failures += 1
            self._problem = f"redis: {exc}"
            raise StoreUnavailable(self._problem) from None
        except redis.ResponseError as exc:
            # Redis answered but refused (out of memory, read-only replica, busy script).
            self.failures += 1
            log.error("redis refused a command: %s", exc)
            if "OOM" in str(exc) or "READONLY" in str(exc) or "BUSY" in str(exc):
                self._problem = f"redis: {exc}"
            raise StoreUnavailable(f"redis: {exc}") from None
        except redis.RedisError as exc:
            # Anything else from the client (a garbled reply): off, as for a lost connection.
            self.failures += 1
            self._problem = f"redis: {exc}"
            raise StoreUnavailable(self._problem) from None

    def problem(self) -> str | None:
        return self._problem

    def counters(self) -> tuple[int, int]:
        return self.failures, 0

    def probe(self) -> bool:
        """Try Redis once; True when it answers (the store is on again)."""
        try:
            self._redis.ping()
            # A Redis that came back empty (restarted without persistence) needs its salt.
            self._salt = self._load_salt()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._problem = f"redis: {exc}"
            return False
        self._problem = None
        return True

    def close(self) -> None:
        self._redis.close()

    # -- messages ---------------------------------------------------------------------------------

    def _meta(self, room: str) -> str:
        return f"chat:{{{room}}}:meta"

    def _log(self, room: str) -> str:
        return f"chat:{{{room}}}:log"

    def _gen(self, room: str) -> str:
        return f"chat:{{{room}}}:gen"

    def room(self, room: str) -> tuple[str, int]:
        keys = [self._meta(room), self._gen(room)]
        epoch, seq = self._call(lambda: self._peek(keys=keys, args=[self._salt, room]))
        return str(epoch), int(seq)

    def add(self, room: str, message: Event, plain: str | None = None) -> Event:
        """Number `message`, keep it and publish it to every node, in one step."""
        keys, args = self.add_call(room, message, plain)
        seq, _ = self._call(lambda: self._add(keys=keys, args=args))
        message["seq"] = int(seq)
        return message

    def add_call(
        self, room: str, message: Event, plain: str | None
    ) -> tuple[list[str], list[str | int | float]]:
        """The keys and arguments of `add`'s script (ADD_SCRIPT), for a pipeline of them."""
        head, tail = _split(message)
        keys = [self._meta(room), self._log(room), self._gen(room)]
        args: list[str | int | float] = [
            self._salt,
            room,
            self._limit,
            head,
            tail,
            room_channel(room),
            json.dumps(plain, ensure_ascii=False),
        ]
        return keys, args

    def failed(self, reason: str) -> None:
        """A call made elsewhere (a pipeline of adds) failed: off until `probe` succeeds."""
        self.failures += 1
        self._problem = reason

    def append(self, room: str, message: Event) -> None:
        keys = [self._meta(room), self._log(room), self._gen(room)]
        args = [self._salt, room, self._limit, message["seq"], p.encode(message)]
        self._call(lambda: self._append(keys=keys, args=args))

    def after(self, room: str, seq: int) -> list[Event] | None:
        _, latest = self.room(room)
        if seq >= latest:
            return [] if seq == latest else None

        def work() -> list[Any]:
            pipe = self._redis.pipeline()
            pipe.xrange(self._log(room), "-", "+", count=1)
            pipe.xrange(self._log(room), f"{seq + 1}-0", "+")
            return list(pipe.execute())

        oldest, entries = self._call(work)
        # Seqs can have gaps; only history trimmed past `seq` makes the answer incomplete.
        if not oldest or _messages(oldest)[0]["seq"] > seq + 1:
            return None
        return _messages(entries)

    def before(self, room: str, before: int | None, limit: int) -> list[Event]:
        if limit <= 0 or (before is not None and before <= 1):
            return []
        top = "+" if before is None else f"{before - 1}-1"
        entries = self._call(
            lambda: self._redis.xrevrange(self._log(room), top, "-", count=min(limit, 10_000))
        )
        return _messages(entries)[::-1]

    def delete_room(self, room: str) -> None:
        def work() -> None:
            pipe = self._redis.pipeline()
            pipe.incr(self._gen(room))
            pipe.delete(self._meta(room), self._log(room), self._reads(room))
            pipe.execute()

        self._call(work)

    def release(self, room: str) -> None:
        # One script: another node may write the room's first message between a look and a
        # delete, and a deleted seq would then be handed out twice.
        keys = [self._meta(room), self._reads(room)]
        self._call(lambda: self._release(keys=keys))

    # -- rooms --------------------------------------------------------------------------------

    def owner(self, room: str) -> str | None:
        return _str(self._call(lambda: self._redis.hget(self._meta(room), "owner")))

    def set_owner(self, room: str, subject: str) -> None:
        def work() -> None:
            pipe = self._redis.pipeline()
            pipe.hset(self._meta(room), "owner", subject)
            # Who ever owned a room is never forgotten as idle (see forget_idle).
            pipe.sadd("chat:owners", subject)
            pipe.execute()

        self._call(work)

    def topic(self, room: str) -> str | None:
        return _str(self._call(lambda: self._redis.hget(self._meta(room), "topic")))

    def set_topic(self, room: str, topic: str) -> None:
        self._call(lambda: self._redis.hset(self._meta(room), "topic", topic))

    def _reads(self, room: str) -> str:
        return f"chat:{{{room}}}:reads"

    def read_marker(self, room: str, subject: str) -> int:
        found = self._call(lambda: self._redis.hget(self._reads(room), subject))
        return int(found) if found else 0

    def set_read_marker(self, room: str, subject: str, seq: int) -> None:
        self._call(lambda: self._redis.hset(self._reads(room), subject, seq))

    # -- identities ---------------------------------------------------------------------------

    def identity_name(self, subject: str) -> str | None:
        return _str(self._call(lambda: self._redis.hget("chat:idnames", subject)))

    def set_identity_name(self, subject: str, name: str, chosen: bool = False) -> None:
        keys = ["chat:names", "chat:idnames", "chat:seen", "chat:chosen"]
        args: list[str | int | float] = [
            subject,
            name,
            key(name),
            self._clock(),
            "1" if chosen else "0",
        ]
        self._call(lambda: self._set_name(keys=keys, args=args))

    def subject_of(self, name: str) -> str | None:
        return _str(self._call(lambda: self._redis.hget("chat:names", key(name))))

    def claim_name(self, subject: str, name: str, holder: str | None) -> bool:
        keys = ["chat:names", "chat:idnames", "chat:seen", "chat:chosen"]
        args: list[str | int | float] = [subject, name, key(name), self._clock(), "1", holder or ""]
        return bool(self._call(lambda: self._claim(keys=keys, args=args)))

    def forget_idle(self) -> int:
        """Forget a batch of idle anonymous identities (as SQLite does); how many went.

        Every one-off connection leaves an identity: without this they would fill Redis.
        The node's heartbeat calls it now and then; any node may, the script is atomic.
        """
        if not self._forget_seconds:
            return 0
        keys = ["chat:seen", "chat:chosen", "chat:owners", "chat:names", "chat:idnames"]
        cutoff = self._clock() - self._forget_seconds
        return int(self._call(lambda: self._forget(keys=keys, args=[cutoff])))

    # -- DMs ------------------------------------------------------------------------------------

    def _mailbox(self, to: str) -> str:
        return f"chat:dms:{to}"

    def hold_dm(self, to: str, sender: str, event: Event) -> None:
        item = json.dumps([sender, event], ensure_ascii=False, separators=(",", ":"))
        self._call(lambda: self._redis.rpush(self._mailbox(to), item))

    def held_dms(self, to: str) -> list[tuple[str, Event]]:
        items = self._call(lambda: self._redis.lrange(self._mailbox(to), 0, -1))
        return [(sender, event) for sender, event in map(json.loads, items)]

    def drop_dms(self, to: str, sender: str) -> None:
        self._call(lambda: self._filter_dms(keys=[self._mailbox(to)], args=["sender", sender]))

    def forget_dms(self, to: str, ids: list[str]) -> None:
        if ids:
            self._call(lambda: self._filter_dms(keys=[self._mailbox(to)], args=["ids", *ids]))

    def dm_consent(self, a: str, b: str) -> tuple[str, str] | None:
        found = _str(self._call(lambda: self._redis.hget("chat:consent", _pair(a, b))))
        if not found:
            return None
        state, _, requester = found.partition("|")
        return state, requester

    def set_dm_consent(self, a: str, b: str, state: str, requester: str) -> None:
        value = f"{state}|{requester}"
        self._call(lambda: self._redis.hset("chat:consent", _pair(a, b), value))


def _pair(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


def _split(message: Event) -> tuple[str, str]:
    """The message's JSON around where its seq goes: seq first, so the split needs no search."""
    body = p.encode({k: v for k, v in message.items() if k != "seq"})
    return MESSAGE_HEAD, "," + body[1:]


def _messages(entries: Any) -> list[Event]:
    """Stream entries (id, {"m": json}) as messages."""
    return [json.loads(fields["m"]) for _, fields in entries or ()]


def _str(value: Any) -> str | None:
    return None if value is None else str(value)
