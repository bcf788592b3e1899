"""`chat-relay demo`: a relay with a few rooms, a day of history and bots that keep talking.

The quickest way to see the project work: everything runs in this one process, in memory, on
127.0.0.1 only (the bots connect to nothing else), and Ctrl+C stops it all like `serve` does.
The bots are ordinary chat.v1 clients: they say their lines at a human pace, greet newcomers,
answer when mentioned, and accept and answer direct messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import secrets
import signal
import sys
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime, timedelta

import uvicorn
import websockets
from uvicorn.config import WS_PROTOCOLS
from uvicorn.importer import import_from_string
from websockets.typing import Subprotocol

from relay.app import create_app
from relay.core import Hub, Limits
from relay.direct import write_path
from relay.store import MemoryStore, Store
from relay.tokens import TokenSigner
from shared.protocol import SUBPROTOCOL, Event, decode_frame

HOST = "127.0.0.1"
BOTS = ("ada", "bruno", "chen")
ROOMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "lobby": ("Welcome! Say hi, ask anything. Mention ada, bruno or chen and they answer.", BOTS),
    "dev": ("Release 2.4 on Thursday · CI must stay green", ("ada", "chen")),
    "random": ("Lunch, links and the occasional cat picture", ("bruno", "chen")),
}

# (minutes ago, author, text): yesterday evening and this morning, for day separators.
HISTORY: dict[str, list[tuple[int, str, str]]] = {
    "lobby": [
        (1510, "maria", "anyone still around?"),
        (1508, "tom", "just leaving, what's up"),
        (1507, "maria", "the staging relay is down, I'll look at it tomorrow"),
        (1505, "tom", "ok, good night!"),
        (95, "ada", "morning all ☀️"),
        (93, "priya", "morning! staging is back, it was a full disk"),
        (92, "maria", "thanks priya 🙏"),
        (90, "bruno", "coffee first, then standup in 10"),
        (74, "chen", "standup notes are in the wiki"),
        (41, "tom", "who is on call this week?"),
        (40, "ada", "me, until Friday"),
        (12, "priya", "new people joining today, be nice 😄"),
    ],
    "dev": [
        (1450, "chen", "pushed the fix for the reconnect loop"),
        (1447, "ada", "nice, I'll review it first thing tomorrow"),
        (88, "ada", "reviewed, two small comments, otherwise 👍"),
        (85, "chen", "addressed, merging after CI"),
        (60, "maria", "is the history page size still 200?"),
        (59, "chen", "yes, and the browser client asks for 100 at a time"),
        (30, "ada", "release branch is cut: release/2.4"),
        (25, "tom", "I'll write the changelog"),
    ],
    "random": [
        (1400, "bruno", "anyone tried the new ramen place?"),
        (1398, "priya", "yes! get the spicy miso"),
        (70, "bruno", "lunch at 12:30? ramen again?"),
        (68, "chen", "I'm in"),
        (67, "maria", "count me in too"),
    ],
}

# What the bots say, in order, round and round, one room each.
SCRIPTS: dict[str, list[tuple[str, str]]] = {
    "lobby": [
        ("bruno", "standup done, that was quick for once"),
        ("ada", "the new relay dashboard looks great"),
        ("chen", "which one, the Grafana one?"),
        ("ada", "yes, the fan-out latency panel is my favourite"),
        ("bruno", "is anyone else getting the calendar invites twice?"),
        ("chen", "yes, I think it's the new sync"),
        ("ada", "reminder: retro on Friday at 15:00"),
        ("bruno", "I'll bring cookies 🍪"),
        ("chen", "then I'll definitely be there"),
    ],
    "dev": [
        ("ada", "CI is green on release/2.4 🎉"),
        ("chen", "running the load test against it now"),
        ("chen", "1000 clients, p99 under 20 ms"),
        ("ada", "ship it"),
        ("chen", "one flaky test in the TUI suite, looking"),
        ("ada", "is it the snapshot one again?"),
        ("chen", "yes, a font difference, fixing the fixture"),
        ("ada", "thanks, I'll tag 2.4.0 after that"),
    ],
    "random": [
        ("bruno", "the office plant is thriving 🌱"),
        ("chen", "someone finally watered it"),
        ("bruno", "it was me, I accept your gratitude"),
        ("chen", "anyone up for a walk after lunch?"),
        ("bruno", "sure, 13:30 at the entrance"),
    ],
}

REPLIES = (
    "hi {name}! I'm a demo bot, but I'm listening 🙂",
    "good question, {name}. Try /help for everything you can do here",
    "{name}: you can DM me too, click my name in the member list",
    "thanks {name}! open the other tabs, #dev is busy today",
)
DM_REPLIES = (
    "hello {name}, this DM went through the accept / decline flow",
    "I'm a bot, {name}, but your message arrived safe and sound",
)


def _ts(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seed(store: Store, now: datetime | None = None) -> None:
    """Put the history into the store as if it had been said over the last day."""
    now = now or datetime.now(UTC)
    number = 0
    for room, (topic, _) in ROOMS.items():
        store.set_topic(room, topic)
        for minutes_ago, author, text in HISTORY[room]:
            number += 1
            message: Event = {
                "type": "message",
                "room": room,
                "id": f"demo-{number}",
                "seq": 0,  # numbered by the store (add)
                "ts": _ts(now - timedelta(minutes=minutes_ago)),
                "from": author,
                "text": text,
            }
            store.add(room, message)


def _pause(text: str, pace: float, rng: random.Random) -> float:
    """Seconds before a line: reading the last one, then typing this one."""
    return pace * (2.5 + len(text) / 15 + rng.uniform(0.0, 5.0))


def _names(text: str) -> Iterator[str]:
    for bot in BOTS:
        if re.search(rf"(?<![\w.-]){bot}(?![\w-])", text, re.IGNORECASE):
            yield bot


class BotLink:
    """One bot in one room: reads everything (a bot that stops reading would be dropped)."""

    def __init__(self, cast: Cast, bot: str, room: str, primary: bool) -> None:
        self.cast = cast
        self.bot = bot
        self.room = room
        self.primary = primary
        self.ws: websockets.ClientConnection | None = None

    @property
    def leads(self) -> bool:
        """One bot per room reacts to what happens there, not every bot that sees it."""
        return self.bot == ROOMS[self.room][1][0]

    async def connect(self, token: str | None) -> Event:
        query = f"?token={token}&backlog=0" if token else "?backlog=0"
        url = f"ws://{HOST}:{self.cast.port}/chat/{self.room}{query}"
        self.ws = await websockets.connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)])
        for event in decode_frame(str(await self.ws.recv())):
            if event.get("type") == "welcome":
                return event
        raise RuntimeError("the relay sent no welcome")

    async def send(self, **request: object) -> None:
        if self.ws is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self.ws.send(json.dumps(request))

    async def read(self) -> None:
        assert self.ws is not None
        with contextlib.suppress(websockets.ConnectionClosed):
            async for frame in self.ws:
                for event in decode_frame(str(frame)):
                    self.cast.heard(self, event)


class Cast:
    """The bots, their links and what they do when something happens."""

    def __init__(self, port: int, pace: float, rng: random.Random) -> None:
        self.port = port
        self.pace = pace
        self.rng = rng
        self.links: dict[tuple[str, str], BotLink] = {}
        self.greeted: set[str] = set()
        # The random names the bots had before they renamed: those joins are no newcomers.
        self.aliases: set[str] = set(BOTS)
        self.answered: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()  # every bot is in its rooms, so newcomers get greeted

    async def run(self) -> None:
        for bot in BOTS:
            token: str | None = None
            for room, (_, members) in ROOMS.items():
                if bot not in members:
                    continue
                link = BotLink(self, bot, room, primary=token is None)
                welcome = await link.connect(token)
                self.aliases.add(str(welcome["you"]))
                if token is None:
                    token = str(welcome["token"])
                    await link.send(type="nick", name=bot)
                self.links[(bot, room)] = link
                self._spawn(link.read())
        self.ready.set()
        await asyncio.gather(*(self._converse(room) for room in SCRIPTS))

    async def _converse(self, room: str) -> None:
        while True:
            for speaker, text in SCRIPTS[room]:
                await asyncio.sleep(_pause(text, self.pace, self.rng))
                link = self.links.get((speaker, room))
                if link is not None:
                    await link.send(type="say", text=text)
            await asyncio.sleep(self.pace * self.rng.uniform(20.0, 40.0))

    def heard(self, link: BotLink, event: Event) -> None:
        kind, sender = event.get("type"), event.get("from")
        if kind == "join" and link.leads:
            name = str(event.get("name"))
            if name not in self.greeted:
                self.greeted.add(name)
                self._greet(link, name)
        elif kind == "message" and sender not in BOTS and isinstance(sender, str):
            for bot in _names(str(event.get("text", ""))):
                replier = self.links.get((bot, link.room))
                if link.leads and replier is not None:
                    text = self.rng.choice(REPLIES).format(name=sender)
                    self._later(replier, 2.0, type="say", text=text)
        elif kind == "dm_request" and link.primary:
            self._later(link, 1.0, type="dm_accept", **{"from": str(sender)})
        elif kind == "dm" and link.primary and event.get("to") == link.bot:
            self._answer_dm(link, event)

    def _answer_dm(self, link: BotLink, event: Event) -> None:
        """A DM reaches all of a bot's connections; the primary one answers it, once."""
        message_id = str(event.get("id"))
        if message_id not in self.answered:
            self.answered.add(message_id)
            sender = str(event.get("from"))
            text = self.rng.choice(DM_REPLIES).format(name=sender)
            self._later(link, 2.0, type="dm", to=sender, text=text)

    def _greet(self, link: BotLink, name: str) -> None:
        async def greet() -> None:
            await asyncio.sleep(self.pace * 1.5 * self.rng.uniform(0.8, 1.6))
            # Checked only now: a bot's join can arrive before its own welcome was read.
            if name not in self.aliases:
                await link.send(type="say", text=f"welcome, {name}! 👋")

        self._spawn(greet())

    def _later(self, link: BotLink, seconds: float, **request: object) -> None:
        async def act() -> None:
            await asyncio.sleep(self.pace * seconds * self.rng.uniform(0.8, 1.6))
            await link.send(**request)

        self._spawn(act())

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


# -- `chat-relay demo` ----------------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "demo",
        help="a relay on 127.0.0.1 with rooms, history and bots that keep talking",
        description="Everything in memory; Ctrl+C stops it.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    parser.add_argument(
        "--pace",
        type=float,
        default=1.0,
        help="seconds scale of the bots' talk (0.1: ten times faster)",
    )


def run(args: argparse.Namespace) -> int:
    # uvicorn re-raises the stop signal after its graceful shutdown; with these handlers in
    # place that is a no-op, so Ctrl+C ends the demo with exit status 0.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    asyncio.run(_demo(args.port, args.pace))
    return 0


async def _demo(port: int, pace: float) -> None:
    # Imported here: relay.cli imports this module to offer the `demo` subcommand.
    from relay.cli import RelayServer

    limits = Limits()
    store = MemoryStore(limits.history)
    seed(store)
    hub = Hub(store, TokenSigner(secrets.token_bytes(32)), limits)
    ws_protocol = import_from_string(WS_PROTOCOLS["websockets-sansio"])
    hub.metrics.write_path = write_path(ws_protocol, send_wrapped=False)
    config = uvicorn.Config(
        create_app(hub),
        host=HOST,
        port=port,
        ws=ws_protocol,
        ws_max_size=limits.max_frame_bytes,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level="warning",
        access_log=False,
    )
    server = RelayServer(config, hub)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    cast = Cast(port, pace, random.Random())
    talking = asyncio.create_task(cast.run())
    try:
        ready = asyncio.create_task(cast.ready.wait())
        await asyncio.wait({ready, serving, talking}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if cast.ready.is_set():
            _print_ways_in(port)
        elif talking.done() and not talking.cancelled():
            print(f"demo: the bots could not join: {talking.exception()!r}", file=sys.stderr)
            server.should_exit = True
        await serving
    finally:
        talking.cancel()
        await asyncio.gather(talking, return_exceptions=True)
        await cast.stop()
        store.close()


def _print_ways_in(port: int) -> None:
    rooms = " ".join(ROOMS)
    print(f"demo: rooms {', '.join('#' + room for room in ROOMS)}; bots {', '.join(BOTS)}")
    print(f"demo: all rooms in a browser: http://{HOST}:{port}/#{rooms.replace(' ', ',')}")
    print(f"demo: all rooms in a terminal: chat-tui connect {rooms} --server ws://{HOST}:{port}")
    print("demo: Ctrl+C stops it", flush=True)
