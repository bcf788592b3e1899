"""One room's WebSocket link: connect, resume after a drop, and deliver what was typed offline.

Both front ends use it: the full-screen app runs `RoomLink.run` in a worker and posts what the
sink receives to the UI; `--plain` runs it directly. The link owns every network detail so the
UI only ever sees protocol events plus status changes.

Resume: the link remembers the room's epoch and the last seq it delivered, reconnects with
`since`/`epoch`, and drops any message it already delivered (by id), so nothing is shown twice.
Says carry a `cid` and stay in the outbox until the relay echoes them; after a reconnect they
are re-sent only once the replay is in, so a say the relay did receive is not posted again.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections import deque
from collections.abc import Callable
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
# Requests the relay always answers (with their event or an `error`); only these wait in flight.
# `dm_accept`/`dm_decline` succeed silently, so tracking them would blame a later error on them.
ANSWERED = {"nick", "dm", "who", "history", "topic", "private", "invite", "remove", "owner"}


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
        ceiling = min(self.cap, self.base * 2 ** min(attempt, 20))
        return ceiling * self.rng.uniform(0.5, 1.0)


@dataclass
class _Pending:
    request: Event
    generation: int = -1


class RoomLink:
    def __init__(
        self,
        server: str,
        room: str,
        identity: Identity,
        sink: Callable[[Event], None],
        on_status: Callable[[Status], None],
        *,
        backlog: int | None = None,
        backoff: Backoff | None = None,
        fail_fast: bool = False,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.room = room
        self.identity = identity
        self.sink = sink
        self.on_status = on_status
        self.backlog = backlog
        self.backoff = backoff or Backoff()
        self.fail_fast = fail_fast
        self.on_idle = on_idle
        self.epoch: str | None = None
        self.last_seq: int | None = None
        self.max_message_bytes: int | None = None
        self.welcomed = False
        self._ready = False
        self._generation = 0
        self._outbox: dict[str, _Pending] = {}
        self._queued: deque[Event] = deque()
        self._read: int | None = None
        self._in_flight: deque[tuple[str, str | None]] = deque()
        self._wake = asyncio.Event()
        self._replay_left = 0
        self._seen: set[str] = set()
        self._seen_order: deque[str] = deque()

    # -- what the UI calls ----------------------------------------------------------------------

    def say(self, text: str) -> str:
        """Queue a message; it is sent now if connected, else after the next resume."""
        cid = secrets.token_hex(8)
        request = {"type": "say", "text": text, "cid": cid}
        self._outbox[cid] = _Pending(request)
        self._queued.append(request)
        self._wake.set()
        return cid

    def send(self, request: Event) -> None:
        """Queue any other request (nick, dm, who, history); sent once, in order with says."""
        self._queued.append(request)
        self._wake.set()

    def mark_read(self, seq: int) -> None:
        """Report the read marker. Kept apart from `send`: the relay answers nothing when the
        marker does not move, so it must not wait as in flight, and only the newest one matters."""
        self._read = seq
        self._wake.set()

    @property
    def unsent(self) -> int:
        """Says not yet echoed by the relay (typed offline, or in flight)."""
        return len(self._outbox)

    @property
    def idle(self) -> bool:
        """Everything asked of the relay has been answered (what `--plain` waits for)."""
        return self.welcomed and not (self._outbox or self._queued or self._in_flight)

    @property
    def connected(self) -> bool:
        return self._ready

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
        return f"{self.server}/chat/{quote(self.room, safe='')}{suffix}"

    # -- the worker -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and stay connected until cancelled; raises LinkFailed when it gives up."""
        attempt = 0
        while True:
            token, first = await self.identity.ticket()
            self._status(State.CONNECTING)
            detail = ""
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
                    self.welcomed = False
                    await self._session(ws)
                code, reason = ws.close_code, ws.close_reason or ""
                if (not self.welcomed and code == CLOSE_POLICY) or code in FINAL_CLOSES:
                    reason = FINAL_CLOSES.get(code or 0, reason)
                    self._status(State.OFFLINE, detail=reason)
                    raise LinkFailed(f"#{self.room}: {reason}")
                detail = f"closed ({code} {reason})".strip()
            except (OSError, InvalidHandshake, TimeoutError, InvalidURI) as error:
                detail = _describe(error)
                if self.fail_fast and attempt == 0 and self.epoch is None:
                    self._status(State.OFFLINE, detail=detail)
                    where = f"{self.server}/chat/{quote(self.room, safe='')}"
                    raise LinkFailed(f"cannot connect to {where}: {detail}") from None
            finally:
                self._ready = False
                if first and not self.welcomed:
                    self.identity.release()
            attempt = 0 if self.welcomed else attempt + 1
            delay = self.backoff.delay(attempt)
            self._status(State.RECONNECTING, retry_in=delay, detail=detail)
            await asyncio.sleep(delay)

    async def _session(self, ws: websockets.ClientConnection) -> None:
        self._generation += 1
        self._in_flight.clear()
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
                        self._receive(event)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self, ws: websockets.ClientConnection) -> None:
        generation = self._generation
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self._ready:
                    continue
                for cid, pending in list(self._outbox.items()):
                    if pending.generation not in (-1, generation) and cid in self._outbox:
                        await self._send_say(ws, cid, pending, generation)
                while self._queued and self._ready:
                    request = self._queued.popleft()
                    cid = request.get("cid") if request["type"] == "say" else None
                    if cid is None:
                        if self._expects_answer(request):
                            self._in_flight.append((request["type"], None))
                        await ws.send(encode(request))
                        continue
                    pending = self._outbox.get(cid)
                    if pending is not None and pending.generation != generation:
                        await self._send_say(ws, cid, pending, generation)
                read = self._read
                if read is not None and self._ready:
                    await ws.send(encode({"type": "read", "seq": read}))
                    if self._read == read:
                        self._read = None
                if self.idle and self.on_idle is not None:
                    self.on_idle()
        except ConnectionClosed:
            return

    def _expects_answer(self, request: Event) -> bool:
        """A nick to the name already held is not announced, so nothing would answer it."""
        kind = request["type"]
        if kind == "nick":
            return request.get("name") != self.identity.name
        return kind in ANSWERED

    async def _send_say(
        self, ws: websockets.ClientConnection, cid: str, pending: _Pending, generation: int
    ) -> None:
        """Send, or re-send after a drop; the outbox keeps it until the relay echoes the cid."""
        pending.generation = generation
        self._in_flight.append(("say", cid))
        await ws.send(encode(pending.request))

    # -- events from the relay ------------------------------------------------------------------

    def _receive(self, event: Event) -> None:
        kind = event.get("type")
        if kind == "welcome":
            self._welcome(event)
        elif kind == "message":
            if not self._message(event):
                return
        elif kind == "error":
            self._error(event)
        elif kind in ("dm", "members", "history", "nick", "topic"):
            self._answered(event)
        self.sink(event)
        if kind == "message" and self._replay_left > 0:
            self._replay_left -= 1
            if self._replay_left == 0:
                self._go_live()

    def _welcome(self, event: Event) -> None:
        if event.get("epoch") != self.epoch:
            self.epoch = event.get("epoch")
            self.last_seq = None
        self.welcomed = True
        self.identity.welcomed(str(event.get("token", "")), str(event.get("you", "")))
        limits = event.get("limits")
        if isinstance(limits, dict) and isinstance(limits.get("max_message_bytes"), int):
            self.max_message_bytes = limits["max_message_bytes"]
        replay = event.get("replay")
        self._replay_left = replay if isinstance(replay, int) and replay > 0 else 0
        if self._replay_left == 0:
            if isinstance(event.get("seq"), int):
                self.last_seq = max(self.last_seq or 0, event["seq"])
            self._go_live()

    def _go_live(self) -> None:
        """Replay is in: says it contained are no longer pending, so the rest can be sent."""
        self._ready = True
        self._wake.set()
        self._status(State.CONNECTED)

    def _message(self, event: Event) -> bool:
        """Track the message; False when it was already delivered."""
        message_id = event.get("id")
        if isinstance(message_id, str):
            if message_id in self._seen:
                return False
            self._seen.add(message_id)
            self._seen_order.append(message_id)
            if len(self._seen_order) > SEEN_IDS:
                self._seen.discard(self._seen_order.popleft())
        seq = event.get("seq")
        if isinstance(seq, int):
            self.last_seq = max(self.last_seq or 0, seq)
        cid = event.get("cid")
        if cid is not None and self._outbox.pop(cid, None) is not None:
            self._drop_in_flight("say", cid)
        return True

    def _answered(self, event: Event) -> None:
        kind = event["type"]
        sender = event.get("by") if kind == "topic" else event.get("from")
        if kind in ("dm", "topic") and sender != self.identity.name:
            return
        if kind == "nick":
            if event.get("old") == self.identity.name:
                self.identity.name = str(event.get("new"))
            elif event.get("new") != self.identity.name:
                return
        self._drop_in_flight(kind, None)

    def _error(self, event: Event) -> None:
        """Errors answer requests in order: the oldest unanswered one is the one refused."""
        if not self._in_flight:
            return
        kind, cid = self._in_flight.popleft()
        if kind == "say" and cid is not None:
            pending = self._outbox.pop(cid, None)
            if pending is not None:
                event["request"] = pending.request

    def _drop_in_flight(self, kind: str, cid: str | None) -> None:
        for index, (pending_kind, pending_cid) in enumerate(self._in_flight):
            if pending_kind == kind and (cid is None or pending_cid == cid):
                del self._in_flight[index]
                return

    def _status(self, state: State, retry_in: float = 0.0, detail: str = "") -> None:
        self.on_status(Status(self.room, state, retry_in, detail))


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return "timed out"
    text = str(error) or type(error).__name__
    return text.splitlines()[0]
