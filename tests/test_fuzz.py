"""Property: whatever one peer sends, everybody else keeps being served.

A live relay (one per module, reused by every example) gets random and malformed frames, JSON,
bytes, URLs and HTTP bodies. After each example, an honest message in the attacked room and one
in another room must reach their witnesses, a plain witness must have been shown only lines the
relay made, `/healthz` must answer, and the relay's stderr must hold no traceback.

`FUZZ_EXAMPLES` sets the number of examples (`make fuzz` runs a long profile).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.relayproc import JsonClient, RelayProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))
STEP_TIMEOUT = 5.0

# Characters worth trying on purpose, next to whatever hypothesis picks.
NASTY = [
    "\ud800", "\udbff", "\udc00", "\udfff",
    "\x00", "\x07", "\x08", "\x1b", "\x1b[2J", "\x1b]0;t\x07", "\r", "\r\n", "\n", "\t",
    "\x7f", "\x85", "\x9b", "\x9d", "\u2028", "\u2029",
    "\u202a", "\u202e", "\u2066", "\u2069", "\u200e", "\u200f", "\u200d", "\ufeff",
    "\ufffd", "\uffff", "\U0010ffff", "\U0001d400", "é", "e\u0301",
    " :: ", "* error x: fake", "%", "/", ".", "..", "?", "&", "=", "#", '"', "\\",
]  # fmt: skip
TYPES = ["say", "nick", "dm", "dm_accept", "dm_decline", "who", "history", "read", "topic"]
TYPES += ["kick", "close", "welcome", "message", "", "SAY"]
FIELDS = ["text", "cid", "to", "name", "from", "before", "limit", "seq"]
# What a plain client may be shown: no control characters but tab and newline (between lines),
# no line separators, no bidi overrides or isolates; and each line made by the relay.
FORBIDDEN_PLAIN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
PLAIN_LINE = re.compile(r"(\* error [a-z_]+: |[\w.-]+ :: |[\w.-]+ -> [\w.-]+ :: )")

nasty_text = st.lists(
    st.sampled_from(NASTY) | st.characters() | st.text(max_size=8), max_size=12
).map("".join)
sendable_text = nasty_text.map(lambda text: re.sub("[\ud800-\udfff]", "", text))
huge = st.integers(19, 400).map(lambda digits: 10**digits - 1)
numbers = st.integers() | huge | huge.map(lambda n: -n) | st.floats() | st.booleans()
scalars = st.none() | numbers | nasty_text
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=3),
    max_leaves=6,
)
requests = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES) | st.sampled_from(TYPES) | scalars},
    optional={name: scalars | values for name in FIELDS},
)


def _json(request: dict[str, Any]) -> str:
    # ensure_ascii writes lone surrogates as `\udXXX` escapes, the way an attacker would.
    return json.dumps(request, ensure_ascii=True)


json_frames = st.one_of(
    requests.map(_json),
    requests.map(_json).map(lambda frame: frame[: len(frame) // 2]),
    sendable_text,
    st.integers(1000, 60000).map(lambda depth: "[" * depth),
    st.integers(100, 3000).map(lambda depth: '{"type":"say","text":' * depth),
    st.integers(4000, 60000).map(lambda digits: '{"type":"history","before":' + "9" * digits),
    st.sampled_from(["null", "[]", "1e999", "NaN", '"say"', '{"type":null}', "{}" * 3]),
)
plain_frames = sendable_text | sendable_text.map(lambda text: text + "\n")
invalid_utf8 = st.binary(max_size=40).map(lambda data: data + b"\xc3(\xff" + data)


@st.composite
def rooms(draw: st.DrawFn) -> str:
    """A room path segment: usually a trick, percent-encoded so the URL itself is valid."""
    tricks = [".", "..", "...", "%2E", "%2e%2E", "a%2Fb", "%00", "a%20b", "%", "%zz", "x" * 65]
    if draw(st.booleans()):
        return draw(st.sampled_from(tricks))
    return quote(draw(sendable_text), safe="")[:200] or "%2E"


queries = st.dictionaries(
    st.sampled_from(["token", "since", "epoch", "backlog", "%74oken", "x"]),
    sendable_text | st.integers(-5, 10**30).map(str),
    max_size=3,
)


@dataclass
class Attack:
    """One thing a hostile or careless peer does; `run` returns once the relay has taken it."""

    kind: str
    payload: Any = None
    extra: Any = None

    def __repr__(self) -> str:
        return f"Attack({self.kind!r}, {self.payload!r:.300}, {self.extra!r:.100})"


attacks = st.one_of(
    st.lists(json_frames, min_size=1, max_size=4).map(lambda frames: Attack("json", frames)),
    st.lists(plain_frames, min_size=1, max_size=4).map(lambda frames: Attack("plain", frames)),
    st.binary(max_size=300).map(lambda data: Attack("binary", data)),
    invalid_utf8.map(lambda data: Attack("utf8", data)),
    st.binary(min_size=1, max_size=300).map(lambda data: Attack("garbage", data)),
    st.binary(max_size=300).map(lambda data: Attack("raw", data)),
    st.tuples(rooms(), queries).map(lambda args: Attack("join", *args)),
    st.tuples(rooms(), st.binary(max_size=300) | requests.map(_json).map(str.encode)).map(
        lambda args: Attack("post", *args)
    ),
    st.tuples(rooms(), queries).map(lambda args: Attack("get", *args)),
)


@dataclass
class Harness:
    """One relay and its witnesses, shared by the examples; started anew after a failure.

    A failed example may have broken the relay for good; starting over lets hypothesis shrink
    to the attack that breaks a healthy relay instead of blaming whatever came next.
    """

    state: Path
    loop: asyncio.AbstractEventLoop
    relay: RelayProcess = field(init=False)
    room: str = "fuzz-a"
    other: str = "fuzz-b"
    clients: dict[str, Any] = field(default_factory=dict)
    http: httpx.AsyncClient = field(init=False)
    log_offset: int = 0
    count: int = 0
    broken: bool = True

    def __repr__(self) -> str:
        return f"Harness(relay on port {self.relay.port})"

    def run(self, make: Callable[[], Awaitable[None]]) -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60):
                await make()

        self.loop.run_until_complete(bounded())

    def ensure(self) -> None:
        if not self.broken:
            return
        if self.clients:
            self.run(self.stop)
            self.relay.stop()
        self.relay = RelayProcess(self.state / f"relay-{self.count}", "--rate", "0")
        self.log_offset = 0
        self.run(self.start)
        self.broken = False

    async def start(self) -> None:
        # The witnesses join first, so the attacker owns neither room.
        self.clients["witness"] = await JsonClient.connect(self.relay.url(self.room))
        self.clients["sender"] = await JsonClient.connect(self.relay.url(self.room))
        self.clients["far-witness"] = await JsonClient.connect(self.relay.url(self.other))
        self.clients["far-sender"] = await JsonClient.connect(self.relay.url(self.other))
        plain = await websockets.connect(self.relay.url(self.room))
        await asyncio.wait_for(plain.recv(), STEP_TIMEOUT)
        self.clients["plain"] = plain
        self.http = httpx.AsyncClient(base_url=self.relay.http, timeout=STEP_TIMEOUT)

    async def stop(self) -> None:
        for client in self.clients.values():
            ws = client if isinstance(client, websockets.ClientConnection) else client.ws
            ws.transport.abort()
        self.clients.clear()
        await self.http.aclose()

    # -- attacks ---------------------------------------------------------------------------------

    async def attack(self, attack: Attack) -> None:
        await getattr(self, f"_{attack.kind}")(attack)

    async def _json(self, attack: Attack) -> None:
        ws = await websockets.connect(self.relay.url(self.room), subprotocols=["chat.v1"])
        for frame in attack.payload:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(frame)
        await settle(ws, json.dumps({"type": "who"}), lambda frame: '"type":"members"' in frame)

    async def _plain(self, attack: Attack) -> None:
        ws = await websockets.connect(self.relay.url(self.room))
        for frame in attack.payload:
            with contextlib.suppress(websockets.ConnectionClosed):
                await ws.send(frame)
        await settle(ws, "sync", lambda frame: frame.endswith(" :: sync"))

    async def _binary(self, attack: Attack) -> None:
        ws = await websockets.connect(self.relay.url(self.room), subprotocols=["chat.v1"])
        await ws.send(attack.payload)
        await settle(ws, json.dumps({"type": "who"}), lambda frame: '"type":"members"' in frame)

    async def _utf8(self, attack: Attack) -> None:
        ws = await websockets.connect(self.relay.url(self.room))
        await ws.send(attack.payload, text=True)
        await settle(ws, None, lambda frame: False)

    async def _garbage(self, attack: Attack) -> None:
        """Bytes that are not WebSocket frames, after a good handshake."""
        ws = await websockets.connect(self.relay.url(self.room))
        ws.transport.write(attack.payload)
        ws.transport.abort()

    async def _raw(self, attack: Attack) -> None:
        """Bytes instead of an HTTP request."""
        _, writer = await asyncio.open_connection("127.0.0.1", self.relay.port)
        writer.write(attack.payload)
        writer.transport.abort()

    async def _join(self, attack: Attack) -> None:
        url = f"ws://127.0.0.1:{self.relay.port}/chat/{attack.payload}"
        if attack.extra:
            url += "?" + urlencode(attack.extra, safe="%")
        protocols = ["chat.v1"] if len(url) % 2 else None
        try:
            ws = await websockets.connect(url, subprotocols=protocols, open_timeout=STEP_TIMEOUT)
        except websockets.InvalidStatus as refused:
            assert refused.response.status_code < 500, refused
            return
        except (websockets.InvalidURI, websockets.InvalidHandshake):
            return
        await settle(ws, None, lambda frame: True)

    async def _post(self, attack: Attack) -> None:
        response = await self.http.post(f"/rooms/{attack.payload}/messages", content=attack.extra)
        assert response.status_code < 500, response.text

    async def _get(self, attack: Attack) -> None:
        response = await self.http.get(f"/rooms/{attack.payload}/messages", params=attack.extra)
        assert response.status_code < 500, response.text

    # -- the property ---------------------------------------------------------------------------

    async def check(self) -> None:
        self.count += 1
        for sender, witness in (("sender", "witness"), ("far-sender", "far-witness")):
            text = f"honest {self.count}"
            await self.clients[sender].send(type="say", text=text)
            # The sender reads too: a client that never reads is dropped as a slow consumer.
            for client in (witness, sender):
                await self.clients[client].expect("message", timeout=STEP_TIMEOUT, text=text)
        await self.plain_sees(f"honest {self.count}")
        assert (await self.http.get("/healthz")).status_code == 200
        log = self.relay.stderr_text()
        fresh, self.log_offset = log[self.log_offset :], len(log)
        assert "Traceback" not in fresh, fresh

    async def plain_sees(self, text: str) -> None:
        """Read the plain witness up to `text`; every frame must be lines the relay made."""
        plain: websockets.ClientConnection = self.clients["plain"]
        while True:
            frame = await asyncio.wait_for(plain.recv(), STEP_TIMEOUT)
            assert isinstance(frame, str)
            assert not FORBIDDEN_PLAIN.search(frame), repr(frame)
            lines = frame.split("\n")
            prefix = PLAIN_LINE.match(lines[0])
            assert prefix is not None, repr(frame)
            assert all(line.startswith(prefix.group()) for line in lines), repr(frame)
            if lines[-1].endswith(f" :: {text}") and len(lines) == 1:
                return


async def settle(
    ws: websockets.ClientConnection, probe: str | None, answered: Callable[[str], bool]
) -> None:
    """Wait until the relay has handled everything sent on `ws` (it answers `probe`, or closes)."""
    with contextlib.suppress(websockets.ConnectionClosed):
        if probe is not None:
            await ws.send(probe)
        while True:
            frame = await asyncio.wait_for(ws.recv(), STEP_TIMEOUT)
            if isinstance(frame, str) and answered(frame):
                break
    ws.transport.abort()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    harness = Harness(tmp_path_factory.mktemp("fuzz"), loop)
    try:
        harness.ensure()
        yield harness
        harness.run(harness.stop)
    finally:
        loop.close()
        if hasattr(harness, "relay"):
            harness.relay.stop()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    report_multiple_bugs=False,
)
@given(attack=st.lists(attacks, min_size=1, max_size=3))
def test_nothing_a_peer_sends_stops_the_relay_serving_others(
    harness: Harness, attack: list[Attack]
) -> None:
    async def example() -> None:
        for step in attack:
            await harness.attack(step)
        await harness.check()

    harness.ensure()
    harness.broken = True
    harness.run(example)
    harness.broken = False


def test_fuzzed_relay_still_serves_and_logged_no_traceback(harness: Harness) -> None:
    harness.ensure()
    harness.run(harness.check)
    assert "Traceback" not in harness.relay.stderr_text()
