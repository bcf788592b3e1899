"""One room's WebSocket link: connect, resume after a drop, and deliver what was typed offline.

Both front ends use it: the full-screen app runs `RoomLink.run` in a worker and posts what the
sink receives to the UI; `--plain` runs it directly. The link owns every network detail so the
UI only ever sees protocol events plus status changes.

The protocol logic is sans-IO: `opened`, `receive` and `outgoing` hold every decision (resume,
replay, going live, what to send, which request an answer belongs to) and are unit-tested by
feeding events; `run` only moves frames between them and a socket.

Resume: the link remembers the room's epoch and the last seq the relay sent, reconnects with
`since`/`epoch`, and drops any message it already delivered (by id), so nothing is shown twice.
Every request carries a `cid`; the relay echoes it on errors, so a refusal is blamed on the
request it answers. Says stay in the outbox until the relay echoes their cid; after a reconnect
they are re-sent only once the replay is in, so a say the relay did receive is not posted again.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, urlencode

import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from shared.protocol import CLOSE_POLICY, SUBPROTOCOL, Event, decode_frame, encode
from tui import access

SEEN_IDS = 4096
# The room owner kicked us (4001) or closed the room (4002): reconnecting would be wrong.
FINAL_CLOSES = {4001: "kicked by the room owner", 4002: "the room was closed by its owner"}
# Requests the relay answers with an event when they succeed (request type -> event type); only
# these wait in flight. The others (`dm_accept`, `dm_decline`, `read`) succeed silently.
ANSWERED_BY = {
    "nick": "nick",
    "dm": "dm",
    "who": "members",
    "history": "history",
    "topic": "topic",
    "kick": "kick",
    "close": "closed",
    "private": "private",
    "invite": "invited",
    "remove": "removed",
    "owner": "owner",
    "register": "registered",
}
_ANSWER_TO = {event: request for request, event in ANSWERED_BY.items()}
# Silent requests are remembered this many at a time, so an error for one can still name it.
SILENT_KEEP = 64
# A connection live this long ends an outage: the next drop starts the backoff over.
STABLE_AFTER = 10.0


class State(Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Status:
    room: str
    state: State
    retry_in: float = 0.0
    detail: str = ""
    url: str = ""


class LinkFailed(Exception):
    """The link gave up: the relay refused the room, or the first connect failed (fail_fast)."""


class Identity:
    """The token and name every link shares, so all tabs of one client are one user.

    Without a token, the first link connects alone and the others wait for its welcome: were
    they to connect at once, each room would hand out a different random name.
    """

    def __init__(self, token: str | None, on_token: Callable[[str], None]) -> None:
        self.token = token
        self.name: str | None = None
        self._on_token = on_token
        self._claimed = False
        self._changed = asyncio.Event()

    async def ticket(self) -> tuple[str | None, bool]:
        """The token to connect with, and whether this link went first without one."""
        while self.token is None and self._claimed:
            await self._changed.wait()
        if self.token is None:
            self._claimed = True
            return None, True
        return self.token, False

    def release(self) -> None:
        """The first link failed before its welcome: let another one try."""
        self._claimed = False
        self._wake()

    def welcomed(self, token: str, name: str) -> None:
        self.name = name
        if token != self.token:
            self.token = token
            self._on_token(token)
        self._claimed = False
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Backoff:
    """Exponential backoff with jitter, so a restarted relay is not hit by everyone at once."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
    ) -> None:
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()

    def delay(self, attempt: int) -> float:
        ceiling: float = min(self.cap, self.base * 2.0 ** min(attempt, 20))
        return ceiling * self.rng.uniform(0.5, 1.0)


class RoomLink:
    def __init__(
        self,
        server: str,
        room: str,
        identity: Identity,
        sink: Callable[[Event, Event | None], object],
        on_status: Callable[[Status], object],
        *,
        backlog: int | None = None,
        backoff: Backoff | None = None,
        fail_fast: bool = False,
        on_idle: Callable[[], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        stable_after: float = STABLE_AFTER,
    ) -> None:
        """`sink(event, request)` gets every new event; `request` is what the event answers
        (the refused request for an error), when the link can tell."""
        self.server = server.rstrip("/")
        self.room = room
        self.identity = identity
        self.sink = sink
        self.on_status = on_status
        self.backlog = backlog
        self.backoff = backoff or Backoff()
        self.fail_fast = fail_fast
        self.on_idle = on_idle
        self.sleep = sleep
        self.clock = clock
        self.stable_after = stable_after
        self.epoch: str | None = None
        self.last_seq: int | None = None
        self.max_message_bytes: int | None = None
        self.welcomed = False
        self._ready = False
        self._live_since: float | None = None
        self._welcome_seq = 0
        self._replay_left = 0
        self._outbox: dict[str, Event] = {}
        self._queued: deque[Event] = deque()
        self._in_flight: dict[str, Event] = {}
        self._silent: dict[str, Event] = {}
        self._barriers: set[str] = set()
        self._read: int | None = None
        self._wake = asyncio.Event()
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    # -- what the UI calls ----------------------------------------------------------------------

    def say(self, text: str) -> str:
        """Queue a message; it is sent now if connected, else after the next resume."""
        return self.send({"type": "say", "text": text})

    def send(self, request: Event) -> str:
        """Queue any request, sent once and in order with says; returns its `cid`."""
        cid = request.get("cid")
        if not isinstance(cid, str):
            cid = secrets.token_hex(8)
            request = {**request, "cid": cid}
        if request["type"] == "say":
            self._outbox[cid] = request
        self._queued.append(request)
        self._wake.set()
        return cid

    def mark_read(self, seq: int) -> None:
        """Report the read marker. Kept apart from `send`: the relay answers nothing when the
        marker does not move, and only the newest one matters."""
        self._read = seq
        self._wake.set()

    @property
    def unsent(self) -> int:
        """Requests typed but not yet taken by the relay (says until echoed)."""
        return len(self._outbox) + sum(1 for r in self._queued if r["type"] != "say")

    @property
    def idle(self) -> bool:
        """Everything asked of the relay has been answered (what `--plain` waits for)."""
        return self.welcomed and not (self._outbox or self._queued or self._in_flight)

    @property
    def connected(self) -> bool:
        return self._ready

    def where(self) -> str:
        return f"{self.server}/chat/{quote(self.room, safe='')}"

    def url(self, token: str | None = None) -> str:
        query: dict[str, str | int] = {}
        if token:
            query["token"] = token
        if self.epoch is not None and self.last_seq is not None:
            query["since"] = self.last_seq
            query["epoch"] = self.epoch
        elif self.backlog is not None:
            query["backlog"] = self.backlog
        suffix = f"?{urlencode(query)}" if query else ""
        return self.where() + suffix

    # -- the sans-IO core -------------------------------------------------------------------------

    def opened(self) -> None:
        """A new socket is open: nothing goes out before its welcome and replay are in.

        Says written on the last socket but never echoed go out again first, before anything
        still queued (they were typed earlier). Other requests written on it are lost with it:
        no answer will come for them.
        """
        self.welcomed = False
        self._ready = False
        self._live_since = None
        self._replay_left = 0
        self._in_flight.clear()
        self._barriers.clear()
        queued = {id(request) for request in self._queued}
        resend = [request for request in self._outbox.values() if id(request) not in queued]
        self._queued.extendleft(reversed(resend))

    def closed(self) -> bool:
        """The socket is gone; True when it had stayed live long enough to end an outage."""
        stable = self._live_since is not None and (
            self.clock() - self._live_since >= self.stable_after
        )
        self._ready = False
        self._live_since = None
        return stable

    def receive(self, event: Event) -> None:
        self._receive(event)
        if self.on_idle is not None and self.idle:
            self.on_idle()

    def _receive(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "welcome":
            self._welcome(event)
            self.sink(event, None)
            if self._replay_left == 0:
                self._go_live()
        elif kind == "message":
            replayed = self._replay_left > 0 and event.get("replay") is True
            if self._message(event):
                self.sink(event, None)
            if replayed:
                self._replay_left -= 1
                if self._replay_left == 0:
                    self._go_live()
        elif kind == "error":
            self.sink(event, self._refused(event))
        elif kind in _ANSWER_TO:
            request = self._answered(event)
            if request is None or request["cid"] not in self._barriers:
                self.sink(event, request)
            else:
                self._barriers.discard(str(request["cid"]))
        else:
            self.sink(event, None)

    def outgoing(self) -> list[Event]:
        """What to write now, in order; nothing until the replay is in."""
        if not self._ready:
            return []
        frames: list[Event] = []
        silent_last = False
        while self._queued:
            request = self._queued.popleft()
            cid = str(request["cid"])
            kind = request["type"]
            if kind == "say":
                if cid not in self._outbox:
                    continue  # echoed in the replay: the relay has it
            elif self._expects_answer(request):
                self._in_flight[cid] = request
            else:
                self._silent[cid] = request
                while len(self._silent) > SILENT_KEEP:
                    del self._silent[next(iter(self._silent))]
            silent_last = cid in self._silent
            frames.append(request)
        if silent_last:
            frames.append(self._barrier())
        if self._read is not None:
            frames.append({"type": "read", "seq": self._read})
            self._read = None
        return frames

    def _barrier(self) -> Event:
        """A request that is always answered, sent after one that succeeds silently.

        The relay answers a connection's requests in order, so once the barrier is answered an
        error for the silent request would have arrived: until then the link is not idle, and
        `--plain` does not exit before it could report the refusal. Its answer is not shown.
        """
        cid = secrets.token_hex(8)
        request: Event = {"type": "who", "cid": cid}
        self._in_flight[cid] = request
        self._barriers.add(cid)
        return request

    def _welcome(self, event: Event) -> None:
        epoch = event.get("epoch")
        if epoch != self.epoch:
            # Seqs of another epoch mean nothing here: resume from this welcome on.
            self.epoch = epoch if isinstance(epoch, str) else None
            self.last_seq = None
        seq = event.get("seq")
        self._welcome_seq = seq if isinstance(seq, int) else 0
        self.welcomed = True
        self.identity.welcomed(str(event.get("token", "")), str(event.get("you", "")))
        limits = event.get("limits")
        if isinstance(limits, dict) and isinstance(limits.get("max_message_bytes"), int):
            self.max_message_bytes = limits["max_message_bytes"]
        replay = event.get("replay")
        self._replay_left = replay if isinstance(replay, int) and replay > 0 else 0

    def _go_live(self) -> None:
        """Replay is in: says it contained are no longer pending, so the rest can be sent."""
        self.last_seq = max(self.last_seq or 0, self._welcome_seq)
        self._ready = True
        self._live_since = self.clock()
        self._wake.set()
        self._status(State.CONNECTED)

    def _message(self, event: Event) -> bool:
        """Track the message; False when it was already delivered.

        Its seq counts even then: after a relay crash the new epoch replays messages already
        shown, and the next resume must start after them.
        """
        seq = event.get("seq")
        if isinstance(seq, int):
            self.last_seq = max(self.last_seq or 0, seq)
        cid = event.get("cid")
        if isinstance(cid, str):
            self._outbox.pop(cid, None)
        message_id = event.get("id")
        if isinstance(message_id, str):
            if message_id in self._seen:
                return False
            self._seen.add(message_id)
            self._seen_order.append(message_id)
            if len(self._seen_order) > SEEN_IDS:
                self._seen.discard(self._seen_order.popleft())
        return True

    def _expects_answer(self, request: Event) -> bool:
        """A nick to the name already held is not announced, so nothing would answer it."""
        kind = request["type"]
        if kind == "nick":
            return request.get("name") != self.identity.name
        return kind in ANSWERED_BY

    def _refused(self, event: Event) -> Event | None:
        """The request this error answers, by the `cid` the relay echoes; None when unknown."""
        cid = event.get("cid")
        if not isinstance(cid, str):
            return None
        for pending in (self._outbox, self._in_flight, self._silent):
            request = pending.pop(cid, None)
            if request is not None:
                return request
        return None

    def _answered(self, event: Event) -> Event | None:
        """The request a success event answers: by echoed cid, else the oldest of its kind.

        Only our own events answer anything: someone else's nick or topic answers nothing.
        """
        cid = event.get("cid")
        if isinstance(cid, str) and cid in self._in_flight:
            return self._in_flight.pop(cid)
        kind = event["type"]
        me = self.identity.name
        if kind == "nick":
            if event.get("old") == me:
                self.identity.name = str(event.get("new"))
            elif event.get("new") != me:
                return None
        elif event.get("from" if kind == "dm" else "by", me) != me:
            return None
        wanted = _ANSWER_TO[kind]
        for cid, request in self._in_flight.items():
            if request["type"] == wanted:
                return self._in_flight.pop(cid)
        return None

    def _status(self, state: State, retry_in: float = 0.0, detail: str = "") -> None:
        self.on_status(Status(self.room, state, retry_in, detail, self.where()))

    # -- the socket -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and stay connected until cancelled; raises LinkFailed when it gives up.

        The backoff grows across attempts and starts over only after a connection stayed live
        for `stable_after` seconds: a relay that accepts and then drops at once is not hammered.
        """
        attempt = 0
        detail = ""
        ever_welcomed = False
        while True:
            token, first = await self.identity.ticket()
            self._status(State.CONNECTING, detail=detail)
            stable = False
            try:
                url = self.url(token)
                async with websockets.connect(
                    url,
                    additional_headers=access.current.headers(),
                    ssl=access.current.ssl_context() if url.startswith("wss:") else None,
                    subprotocols=[Subprotocol(SUBPROTOCOL)],
                    open_timeout=10,
                    max_size=None,
                ) as ws:
                    self.opened()
                    await self._session(ws)
                code, reason = ws.close_code, ws.close_reason or ""
                if (not self.welcomed and code == CLOSE_POLICY) or code in FINAL_CLOSES:
                    reason = FINAL_CLOSES.get(code or 0, reason)
                    self._status(State.OFFLINE, detail=reason)
                    raise LinkFailed(f"#{self.room}: {reason}")
                detail = f"closed ({code} {reason})".strip()
            except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as error:
                detail = _describe(error)
                if self.fail_fast and not ever_welcomed:
                    self._status(State.OFFLINE, detail=detail)
                    raise LinkFailed(f"cannot connect to {self.where()}: {detail}") from None
            finally:
                ever_welcomed = ever_welcomed or self.welcomed
                stable = self.closed()
                if first and not self.welcomed:
                    self.identity.release()
            if stable:
                attempt = 0
            delay = self.backoff.delay(attempt)
            attempt += 1
            self._status(State.RECONNECTING, retry_in=delay, detail=detail)
            await self.sleep(delay)

    async def _session(self, ws: websockets.ClientConnection) -> None:
        writer = asyncio.create_task(self._write(ws))
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    continue
                try:
                    events = decode_frame(frame)
                except ValueError:
                    continue
                for event in events:
                    if isinstance(event, dict):
                        self.receive(event)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self, ws: websockets.ClientConnection) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                for request in self.outgoing():
                    await ws.send(encode(request))
                if self.idle and self.on_idle is not None:
                    self.on_idle()
        except ConnectionClosed:
            return


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text.splitlines()[0]
