"""Several relay nodes as one relay, over Redis pub/sub (see docs/scaling.md).

Each node subscribes to one channel per room it has members in (`chat:{room}:events`), to its
own channel (`chat:n:{node}`: DMs and answers for the identities connected to it, listed in
`chat:online:{subject}`), and to one for announcements. An identity's DMs go through node
channels rather than a channel per identity because those are subscribed before the node takes
any connection: a DM sent the moment someone connects is never lost in a subscription that has
not started yet. Messages are
published by `RedisStore.add` in the same script that numbers them, so a room's channel
carries them in seq order; other room events (joins, topics, kicks) are published here with
the node's id, and the node that published them skips its own.

Presence: `chat:{room}:present` counts, per name, the nodes it is on; each node keeps a
heartbeat key (`chat:alive:{node}`, PX `ttl`) and lists what it holds in
`chat:node:{node}:present`. A node whose heartbeat lapsed is swept by the first live node
that notices (one script, so only one does), and its members leave with leave events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from relay.cluster import Backplane, Refusal
from relay.store import StoreUnavailable
from relay.store.redis import ADD_SCRIPT, MESSAGE_HEAD, TIMEOUT, RedisStore, room_channel
from shared.protocol import Event, now_rfc3339

if TYPE_CHECKING:
    from relay.core import Hub

log = logging.getLogger("relay.cluster")

ALL = "chat:all"
LIVE = "chat:live"
NODES = "chat:nodes"
HEARTBEAT_TTL = 10.0
RETRY_FIRST = 0.1
RETRY_LAST = 5.0
# After a failed call, how long the hub's calls are answered without asking Redis.
HOLD = 2.0
# How long a stopping node waits for its loops to end.
STOP_SECONDS = 1.0
# How often a node forgets a batch of idle identities (RedisStore.forget_idle).
FORGET_SECONDS = 60.0

# KEYS: the room's presence, this node's presence, the live rooms; ARGV: name, "room\\nname",
# room. Returns 1 when the name was on no node before (JOIN) or is on none now (LEAVE).
_JOIN = """
if redis.call('HSETNX', KEYS[2], ARGV[2], 1) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[3])
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1) == 1 and 1 or 0
"""
_LEAVE = """
if redis.call('HDEL', KEYS[2], ARGV[2]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) > 0 then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return 1
"""
# KEYS: the identity's nodes; ARGV: this node, the payload. Returns how many nodes heard it.
_TO_USER = """
local heard = 0
for _, node in ipairs(redis.call('HKEYS', KEYS[1])) do
  if node ~= ARGV[1] then heard = heard + redis.call('PUBLISH', 'chat:n:' .. node, ARGV[2]) end
end
return heard
"""
# KEYS: the node list, the dead node's heartbeat, its presence, its identities; ARGV: the
# dead node. Returns the "room\\nname" of every member that is now on no node.
_SWEEP = """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return {} end
for _, subject in ipairs(redis.call('SMEMBERS', KEYS[4])) do
  redis.call('HDEL', 'chat:online:' .. subject, ARGV[1])
end
redis.call('DEL', KEYS[4])
local gone = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
  local cut = string.find(field, '\\n', 1, true)
  local present = 'chat:{' .. string.sub(field, 1, cut - 1) .. '}:present'
  local name = string.sub(field, cut + 1)
  if redis.call('HINCRBY', present, name, -1) <= 0 then
    redis.call('HDEL', present, name)
    table.insert(gone, field)
    if redis.call('HLEN', present) == 0 then
      redis.call('SREM', 'chat:live', string.sub(field, 1, cut - 1))
    end
  end
end
redis.call('DEL', KEYS[3])
return gone
"""


def _present(room: str) -> str:
    return f"chat:{{{room}}}:present"


def _online(subject: str) -> str:
    return f"chat:online:{subject}"


def _sweep_keys(node: str) -> list[str]:
    return [NODES, f"chat:alive:{node}", f"chat:node:{node}:present", f"chat:node:{node}:users"]


class RedisBackplane(Backplane):
    ordered = True

    def __init__(
        self, url: str, store: RedisStore, ttl: float = HEARTBEAT_TTL, node: str = ""
    ) -> None:
        self.node = node or secrets.token_hex(6)
        self._url = url
        self._store = store
        self._ttl = ttl
        self._sync = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )
        self._join = self._sync.register_script(_JOIN)
        self._leave = self._sync.register_script(_LEAVE)
        self._to_user = self._sync.register_script(_TO_USER)
        self._mine = f"chat:node:{self.node}:present"
        self._my_users = f"chat:node:{self.node}:users"
        self._channel = f"chat:n:{self.node}"
        # The channels this node wants; the subscriber task makes it so.
        self._wanted: set[str] = {ALL, self._channel}
        self._changed: asyncio.Event | None = None
        self._problem: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.hub: Hub | None = None
        self.reconnects = 0
        self.swept = 0
        # Whether the subscriber holds a working subscription: a node hears the others then.
        self._listening = False
        # Set by `stop`: the loops end even if a library swallowed their cancellation.
        self._stopping = False
        self._quiet_until = 0.0
        self._held = False
        # Messages waiting to be numbered: sent as one pipeline, one pipeline at a time, so
        # each sender's messages keep their order.
        self._outbox: list[tuple[list[str], list[str | int | float], Event, Refusal]] = []
        self._sender: asyncio.Task[None] | None = None
        self._adds: redis.asyncio.Redis | None = None

    # -- life -----------------------------------------------------------------------------------

    def start(self, hub: Hub) -> None:
        self.hub = hub
        self._changed = asyncio.Event()
        self._adds = redis.asyncio.Redis.from_url(
            self._url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )
        self._add_script = self._adds.register_script(ADD_SCRIPT)
        self._tasks = [
            asyncio.create_task(self._subscriber()),
            asyncio.create_task(self._heartbeat()),
        ]

    async def stop(self) -> None:
        """Leave the cluster: nothing of this node stays for the others to sweep."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_SECONDS)
        with contextlib.suppress(redis.RedisError):
            self._sync.delete(f"chat:alive:{self.node}")
            self._sweep_now(self.node)
        self._sync.close()
        if self._adds is not None:
            with contextlib.suppress(redis.RedisError):
                await self._adds.aclose()

    # -- what the hub calls ---------------------------------------------------------------------

    def submit(self, room: str, message: Event, plain: str | None, refused: Refusal) -> bool:
        if self._adds is None:
            return False
        keys, args = self._store.add_call(room, message, plain)
        self._outbox.append((keys, args, message, refused))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_adds())
        return True

    async def _send_adds(self) -> None:
        """Number what was submitted, a pipeline per round trip (whatever arrived meanwhile).

        The messages come back through the room's channel; only a failure is answered here.
        A pipeline that failed part way may have kept some of its messages: those are still
        published, so a sender can see its message after the error (docs/scaling.md).
        """
        assert self._adds is not None
        while self._outbox:
            batch, self._outbox = self._outbox, []
            pipe = self._adds.pipeline(transaction=False)
            for keys, args, _, _ in batch:
                await self._add_script(keys=keys, args=args, client=pipe)
            try:
                results = await pipe.execute(raise_on_error=False)
            except (redis.RedisError, OSError) as exc:
                results = [exc] * len(batch)
            for (_, _, message, refused), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    reason = f"redis: {result}"
                    self._store.failed(reason)
                    refused(reason)
                else:
                    message["seq"] = int(result[0])

    def _want(self, channel: str, wanted: bool) -> None:
        if wanted:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        if self._changed is not None:
            self._changed.set()

    def open_room(self, room: str) -> None:
        self._want(room_channel(room), True)

    def close_room(self, room: str) -> None:
        self._want(room_channel(room), False)

    def open_user(self, subject: str) -> None:
        if self._holding():
            return
        try:
            pipe = self._sync.pipeline()
            pipe.hset(_online(subject), self.node, 1)
            pipe.sadd(self._my_users, subject)
            pipe.execute()
        except redis.RedisError as exc:
            self._fail(exc)

    def close_user(self, subject: str) -> None:
        if self._holding():
            return
        try:
            pipe = self._sync.pipeline()
            pipe.hdel(_online(subject), self.node)
            pipe.srem(self._my_users, subject)
            pipe.execute()
        except redis.RedisError as exc:
            self._fail(exc)

    def _publish(self, channel: str, envelope: dict[str, Any]) -> int:
        if self._holding():
            return 0
        data = json.dumps({**envelope, "o": self.node}, ensure_ascii=False)
        try:
            return int(self._sync.publish(channel, data))
        except redis.RedisError as exc:
            self._fail(exc)
            return 0

    def publish_room(
        self, room: str, event: Event, plain: str | None, to: list[str] | None = None
    ) -> None:
        envelope: dict[str, Any] = {"e": event, "p": plain}
        if to is not None:
            envelope["to"] = to
        self._publish(room_channel(room), envelope)

    def publish_user(
        self, subject: str, event: Event, plain: str | None, sender: str | None = None
    ) -> bool:
        if self._holding():
            return False
        envelope = {"u": subject, "e": event, "p": plain, "o": self.node, "s": sender}
        data = json.dumps(envelope, ensure_ascii=False)
        try:
            return bool(self._to_user(keys=[_online(subject)], args=[self.node, data]))
        except redis.RedisError as exc:
            self._fail(exc)
            return False

    def online_elsewhere(self, subject: str) -> bool:
        if self._holding():
            return False
        try:
            nodes = self._sync.hkeys(_online(subject))
        except redis.RedisError as exc:
            self._fail(exc)
            return False
        return any(str(node) != self.node for node in nodes)

    def publish_all(self, event: Event, plain: str | None) -> None:
        self._publish(ALL, {"e": event, "p": plain})

    def joined(self, room: str, name: str) -> bool:
        if self._holding():
            return True
        try:
            keys, args = [_present(room), self._mine, LIVE], [name, f"{room}\n{name}", room]
            return bool(self._join(keys=keys, args=args))
        except redis.RedisError as exc:
            self._fail(exc)
            return True

    def left(self, room: str, name: str) -> bool:
        if self._holding():
            return True
        try:
            keys, args = [_present(room), self._mine, LIVE], [name, f"{room}\n{name}", room]
            return bool(self._leave(keys=keys, args=args))
        except redis.RedisError as exc:
            self._fail(exc)
            return True

    def stale(self, here: set[tuple[str, str]]) -> list[tuple[str, str]]:
        try:
            listed = self._sync.hkeys(self._mine)
        except redis.RedisError as exc:
            self._fail(exc)
            return []
        pairs = [str(field).split("\n", 1) for field in listed]
        return [(pair[0], pair[1]) for pair in pairs if len(pair) == 2 and tuple(pair) not in here]

    def members(self, room: str) -> list[str] | None:
        if self._holding():
            return None
        try:
            return [str(name) for name in self._sync.hkeys(_present(room))]
        except redis.RedisError as exc:
            self._fail(exc)
            return None

    def rooms(self) -> dict[str, int] | None:
        if self._holding():
            return None
        try:
            live = sorted(str(room) for room in self._sync.smembers(LIVE))
            pipe = self._sync.pipeline(transaction=False)
            for room in live:
                pipe.hlen(_present(room))
            return {room: int(count) for room, count in zip(live, pipe.execute(), strict=True)}
        except redis.RedisError as exc:
            self._fail(exc)
            return None

    def problem(self) -> str | None:
        return self._problem

    def metrics(self) -> str:
        healthy = 0 if self._problem is not None else 1
        return (
            "# HELP chat_backplane_healthy 1 while Redis pub/sub is reachable.\n"
            "# TYPE chat_backplane_healthy gauge\n"
            f"chat_backplane_healthy {healthy}\n"
            "# HELP chat_backplane_reconnects_total Subscriptions made again after a break.\n"
            "# TYPE chat_backplane_reconnects_total counter\n"
            f"chat_backplane_reconnects_total {self.reconnects}\n"
            "# HELP chat_backplane_swept_total Members of dead nodes made to leave here.\n"
            "# TYPE chat_backplane_swept_total counter\n"
            f"chat_backplane_swept_total {self.swept}\n"
        )

    def _fail(self, exc: Exception) -> None:
        if self._problem is None:
            log.error("redis backplane: %s", exc)
        self._problem = f"redis: {exc}"
        # Not asked again for a moment: a hung Redis must not freeze the loop on every call.
        self._quiet_until = time.monotonic() + HOLD

    def _holding(self) -> bool:
        return time.monotonic() < self._quiet_until

    # -- the subscriber -------------------------------------------------------------------------

    async def _subscriber(self) -> None:
        """Keep the node subscribed to what it wants; after a break, resubscribe and resync."""
        delay = RETRY_FIRST
        first = True
        while not self._stopping:
            client = redis.asyncio.Redis.from_url(
                self._url, socket_connect_timeout=TIMEOUT, decode_responses=True
            )
            pubsub = client.pubsub()
            try:
                await self._listen(pubsub, first)
            except (redis.RedisError, OSError) as exc:
                self._fail(exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    await client.aclose()
            first = False
            # A subscription that held starts the backoff again from the shortest wait.
            delay = RETRY_FIRST if self._held else min(delay * 2, RETRY_LAST)
            self._held = False
            await asyncio.sleep(delay * (0.5 + secrets.randbelow(1000) / 1000))

    async def _listen(self, pubsub: redis.asyncio.client.PubSub, first: bool) -> None:
        assert self.hub is not None and self._changed is not None
        subscribed = set(self._wanted)
        await pubsub.subscribe(*subscribed)
        changes = asyncio.create_task(self._follow(pubsub, subscribed))
        try:
            if not first:
                self.reconnects += 1
                log.warning("redis backplane: subscribed again; catching up")
            if not first or self._store.problem() is not None:
                await asyncio.to_thread(self._store.probe)
            self._listening = self._held = True
            if self._store.problem() is None:
                self._problem = None
                self._present_again()
                self.hub.resync()
            while True:
                message = await pubsub.get_message(timeout=None)
                if message is not None:
                    self._dispatch(message)
        finally:
            self._listening = False
            changes.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await changes

    async def _follow(self, pubsub: redis.asyncio.client.PubSub, subscribed: set[str]) -> None:
        """Subscribe and unsubscribe as rooms and identities come and go on this node."""
        assert self._changed is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = set(self._wanted)
            new, old = wanted - subscribed, subscribed - wanted
            if new:
                await pubsub.subscribe(*new)
            if old:
                await pubsub.unsubscribe(*old)
            subscribed.clear()
            subscribed.update(wanted)

    def _dispatch(self, message: dict[str, Any]) -> None:
        hub = self.hub
        assert hub is not None
        kind, channel, data = message["type"], str(message["channel"]), message["data"]
        try:
            if kind == "subscribe" and channel.endswith("}:events"):
                # Live from here on: what was said before the subscription took effect comes
                # from the room's stream.
                room = hub.rooms.get(channel[6:-8])
                if room is not None:
                    hub.catch_up(room.name)
                return
            if kind != "message":
                return
            if channel.endswith("}:events"):
                room_name = channel[6:-8]
                if data.startswith(MESSAGE_HEAD):
                    encoded, _, plain = data.partition("\n")
                    hub.remote_message(room_name, json.loads(encoded), json.loads(plain), encoded)
                    return
                envelope = json.loads(data)
                if envelope.get("o") != self.node:
                    hub.remote_event(
                        room_name, envelope["e"], envelope.get("p"), envelope.get("to")
                    )
                return
            envelope = json.loads(data)
            if envelope.get("o") == self.node:
                return
            if channel == ALL:
                hub.remote_all(envelope["e"])
            elif channel == self._channel:
                hub.remote_user(envelope["u"], envelope["e"], envelope.get("p"), envelope.get("s"))
        except Exception:
            # One bad event from another node must not stop this node's subscriber.
            log.exception("redis backplane: could not hand on an event from %s", channel)

    # -- presence -------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        """Say this node is alive every ttl/3; sweep the nodes that stopped saying so."""
        client = redis.asyncio.Redis.from_url(
            self._url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True
        )
        sweep = client.register_script(_SWEEP)
        forget_at = 0.0
        try:
            while not self._stopping:
                try:
                    await client.set(f"chat:alive:{self.node}", 1, px=int(self._ttl * 1000))
                    if await client.sadd(NODES, self.node) and self.hub is not None:
                        # Swept while away (Redis lost, or this node stalled): be present again.
                        self._present_again()
                    for found in await client.smembers(NODES):
                        node = str(found)
                        if node != self.node:
                            gone = await sweep(keys=_sweep_keys(node), args=[node])
                            self._announce_gone(gone)
                    if self._store.problem() is not None:
                        if await asyncio.to_thread(self._store.probe) and self.hub is not None:
                            # What was refused or missed meanwhile: delivered now, in order.
                            self.hub.resync()
                    elif asyncio.get_running_loop().time() >= forget_at:
                        forget_at = asyncio.get_running_loop().time() + FORGET_SECONDS
                        with contextlib.suppress(StoreUnavailable):
                            await asyncio.to_thread(self._store.forget_idle)
                    if self._listening and self._store.problem() is None:
                        # A command failed while the subscription held: nothing was missed.
                        self._problem = None
                except (redis.RedisError, OSError) as exc:
                    self._fail(exc)
                await asyncio.sleep(self._ttl / 3)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()

    def _sweep_now(self, node: str) -> None:
        sweep = self._sync.register_script(_SWEEP)
        self._announce_gone(sweep(keys=_sweep_keys(node), args=[node]))

    def _announce_gone(self, gone: list[str]) -> None:
        for field in gone:
            room, _, name = str(field).partition("\n")
            self.swept += 1
            event = {"type": "leave", "room": room, "name": name, "ts": now_rfc3339()}
            # From no node: every node hands it on, this one included.
            data = json.dumps({"e": event, "p": f"{name} :: left the chat", "o": ""})
            self._sync.publish(room_channel(room), data)

    def _present_again(self) -> None:
        if self.hub is not None:
            self.hub.present_again()
