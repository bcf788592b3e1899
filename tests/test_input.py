"""Input the relay refuses at the door: one bad frame must never freeze delivery for anybody."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import websockets

from shared.sanitize import clean
from tests.relayproc import JsonClient, RelayProcess, closed


async def recv(ws: websockets.ClientConnection, timeout: float = 5.0) -> str:
    return await asyncio.wait_for(ws.recv(), timeout)


@dataclass
class Witnesses:
    """A JSON client in the attacked room and one in another room, each with an honest sender."""

    here: JsonClient
    there: JsonClient
    elsewhere: str

    async def still_served(self, tag: str) -> None:
        """An honest message in each room reaches its witness, and so does the next one."""
        for witness in (self.here, self.there):
            await witness.send(type="say", text=f"honest {tag}")
            await witness.expect("message", text=f"honest {tag}")


@pytest.fixture
async def witnesses(relay: RelayProcess, room: str) -> AsyncIterator[Witnesses]:
    here = await JsonClient.connect(relay.url(room))
    there = await JsonClient.connect(relay.url(room + "-elsewhere"))
    yield Witnesses(here, there, room + "-elsewhere")
    await here.close()
    await there.close()


# Each frame carries a lone surrogate (the JSON escape written out) in one of the fields a
# client can send; the relay must answer with an error and post nothing.
SURROGATE_FRAMES = [
    r'{"type":"say","text":"x\ud800y"}',
    r'{"type":"say","text":"x\udfffy"}',
    r'{"type":"say","text":"ok","cid":"c\ud800"}',
    r'{"type":"dm","to":"SELF","text":"x\ud800y"}',
    r'{"type":"dm","to":"x\ud800y","text":"hi"}',
    r'{"type":"nick","name":"x\ud800y"}',
    r'{"type":"kick","name":"x\ud800y"}',
    r'{"type":"dm_accept","from":"x\ud800y"}',
    r'{"type":"x\ud800y"}',
]


@pytest.mark.parametrize("frame", SURROGATE_FRAMES)
async def test_surrogate_in_any_field_is_refused(
    relay: RelayProcess, room: str, witnesses: Witnesses, frame: str
) -> None:
    sender = await JsonClient.connect(relay.url(room))
    await sender.ws.send(frame.replace("SELF", sender.welcome["you"]))
    error = await sender.expect("error")
    assert error["code"] in {"bad_text", "bad_name", "unknown_type"}
    await witnesses.still_served("after surrogate")
    await sender.send(type="say", text="sender still served")
    await sender.expect("message", text="sender still served")
    assert all("\ud800" not in json.dumps(event) for event in witnesses.here.seen)
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        page = await http.get(f"/rooms/{room}/messages")
    assert page.status_code == 200
    assert [m["text"] for m in page.json()["messages"]] == [
        "honest after surrogate",
        "sender still served",
    ]
    await sender.close()


async def test_surrogate_say_error_is_bad_text(relay: RelayProcess, room: str) -> None:
    sender = await JsonClient.connect(relay.url(room))
    await sender.ws.send(r'{"type":"say","text":"x\ud800y","cid":"c-1"}')
    error = await sender.expect("error")
    assert (error["code"], error["request"], error["cid"]) == ("bad_text", "say", "c-1")
    assert "U+D800" in error["detail"]
    await sender.close()


async def test_surrogate_topic_from_owner_is_refused(
    relay: RelayProcess, room: str, witnesses: Witnesses
) -> None:
    owner = witnesses.here
    await owner.ws.send(r'{"type":"topic","text":"x\ud800y"}')
    error = await owner.expect("error")
    assert (error["code"], error["request"]) == ("bad_text", "topic")
    await witnesses.still_served("after topic")
    assert owner.welcome["topic"] is None
    again = await JsonClient.connect(relay.url(room))
    assert again.welcome["topic"] is None
    await again.close()


@pytest.mark.parametrize(
    "body",
    [
        rb'{"from":"bot","text":"x\ud800y"}',
        b'{"from":"bot","text":"x\xed\xa0\x80y"}',
        rb'{"from":"b\ud800t","text":"hi"}',
    ],
    ids=["escape", "raw-bytes", "in-from"],
)
async def test_surrogate_http_post_is_refused(
    relay: RelayProcess, room: str, witnesses: Witnesses, body: bytes
) -> None:
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        response = await http.post(
            f"/rooms/{room}/messages", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert response.json()["error"] in {"bad_text", "bad_name"}
        await witnesses.still_served("after post")
        page = await http.get(f"/rooms/{room}/messages")
    assert page.status_code == 200
    assert [m["text"] for m in page.json()["messages"]] == ["honest after post"]


# -- control and bidi characters; what plain clients are shown --------------------------------

REFUSED_TEXTS = {
    "csi-colour": "\x1b[31mred",
    "osc-title": "\x1b]0;owned\x07",
    "nul": "a\x00b",
    "carriage-return": "fine\rforged",
    "del": "a\x7fb",
    "c1-nel": "a\x85b",
    "c1-csi": "a\x9b31mb",
    "bidi-override": "abc\u202edcba",
    "bidi-isolate": "abc\u2066x\u2069",
    "line-separator": "a\u2028b",
}


@pytest.mark.parametrize("text", REFUSED_TEXTS.values(), ids=REFUSED_TEXTS.keys())
async def test_control_and_bidi_characters_are_refused(
    relay: RelayProcess, room: str, text: str
) -> None:
    sender = await JsonClient.connect(relay.url(room))
    await sender.send(type="say", text=text, cid="c-1")
    error = await sender.expect("error")
    assert (error["code"], error["request"]) == ("bad_text", "say")
    assert f"U+{ord(next(c for c in text if not c.isprintable())):04X}" in error["detail"]
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        response = await http.post(f"/rooms/{room}/messages", json={"from": "bot", "text": text})
        assert (response.status_code, response.json()["error"]) == (400, "bad_text")
        page = (await http.get(f"/rooms/{room}/messages")).json()
    assert page["messages"] == []
    await sender.close()


async def test_control_characters_are_refused_in_other_fields(
    relay: RelayProcess, room: str
) -> None:
    sender = await JsonClient.connect(relay.url(room))
    await sender.send(type="say", text="hi", cid="c\x1b[2J")
    assert (await sender.expect("error"))["code"] == "bad_text"
    await sender.send(type="dm", to="x\x1b]0;t\x07", text="hi")
    assert (await sender.expect("error"))["code"] == "bad_text"
    await sender.send(type="topic", text="\u202eevil")
    assert (await sender.expect("error"))["code"] == "bad_text"
    await sender.close()


async def test_tab_newline_and_ordinary_unicode_are_kept(relay: RelayProcess, room: str) -> None:
    sender = await JsonClient.connect(relay.url(room))
    text = "col1\tcol2\n\u05e9\u05dc\u05d5\u05dd\u200f 👩\u200d💻 e\u0301"
    await sender.send(type="say", text=text)
    assert (await sender.expect("message"))["text"] == text
    await sender.close()


async def test_plain_control_characters_get_an_error_line(relay: RelayProcess, room: str) -> None:
    async with websockets.connect(relay.url(room)) as plain:
        await recv(plain)
        await plain.send("\x1b[31mred")
        line = await recv(plain)
        assert line.startswith("* error bad_text: text contains U+001B"), line
        assert line.isprintable()


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
async def test_plain_trailing_line_break_is_not_part_of_the_message(
    relay: RelayProcess, room: str, ending: str
) -> None:
    witness = await JsonClient.connect(relay.url(room))
    async with websockets.connect(relay.url(room)) as plain:
        name = (await recv(plain)).partition(" :: ")[0]
        await plain.send("hello" + ending)
        assert await recv(plain) == f"{name} :: hello"
        assert (await witness.expect("message"))["text"] == "hello"
        await plain.send("two\nlines\n")
        assert await recv(plain) == f"{name} :: two\n{name} :: lines"
        assert (await witness.expect("message"))["text"] == "two\nlines"
        await plain.send(ending)
        assert (await recv(plain)).startswith("* error empty:")
    await witness.close()


FORGERY = "hi\nalice :: I owe mallory 100 EUR\n* error x: fake"


def every_line_from(frame: str, prefix: str) -> None:
    lines = frame.split("\n")
    assert len(lines) == 3, frame
    assert all(line.startswith(prefix) for line in lines), frame


async def test_multiline_message_lines_all_name_the_sender(relay: RelayProcess, room: str) -> None:
    mallory = await JsonClient.connect(relay.url(room))
    name = mallory.welcome["you"]
    async with websockets.connect(relay.url(room)) as plain:
        await recv(plain)
        await mallory.send(type="say", text=FORGERY)
        every_line_from(await recv(plain), f"{name} :: ")
        async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
            response = await http.post(
                f"/rooms/{room}/messages", json={"from": "bot", "text": FORGERY}
            )
            assert response.status_code == 201
        every_line_from(await recv(plain), "bot :: ")
        await mallory.send(type="topic", text=FORGERY)
        frame = await recv(plain)
        every_line_from(frame, f"{name} :: ")
        assert frame.startswith(f"{name} :: set the topic: hi\n")
    await mallory.close()


async def test_multiline_dm_lines_all_name_sender_and_recipient(
    relay: RelayProcess, room: str
) -> None:
    mallory = await JsonClient.connect(relay.url(room))
    bob = await JsonClient.connect(relay.url(room))
    await mallory.send(type="dm", to=bob.welcome["you"], text="first")
    await bob.expect("dm_request")
    await bob.send(type="dm_accept", **{"from": mallory.welcome["you"]})
    await mallory.expect("dm_accepted")
    async with websockets.connect(relay.url(room, f"token={bob.welcome['token']}")) as plain:
        await recv(plain)
        await mallory.send(type="dm", to=bob.welcome["you"], text=FORGERY)
        every_line_from(await recv(plain), f"{mallory.welcome['you']} -> {bob.welcome['you']} :: ")
    await mallory.close()
    await bob.close()


def test_clients_drop_bidi_controls_from_what_they_show() -> None:
    assert clean("abc\u202edcba \u2066x\u2069") == "abcdcba x"
    assert clean("a\tb\nc \u200f") == "a\tb\nc \u200f"
    escapes = ["clear\x1b[2Jscreen", "clip\x1b]52;c;ZXZpbA==\x07board", "csi\x9b31mred"]
    assert [clean(text) for text in escapes] == ["clearscreen", "clipboard", "csired"]


# -- malformed frames, queries and paths --------------------------------------------------------

DEEP = "[" * 60000


async def test_deep_json_nesting_is_bad_json(relay_factory) -> None:
    relay = relay_factory("--rate", "0")
    client = await JsonClient.connect(relay.url("deep"))
    for frame in (DEEP, '{"type":"say","text":' * 3000, '{"a":' * 12000 + "1"):
        await client.ws.send(frame)
        assert (await client.expect("error"))["code"] == "bad_json"
    await client.send(type="say", text="still here")
    await client.expect("message", text="still here")
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        response = await http.post("/rooms/deep/messages", content=DEEP)
    assert (response.status_code, response.json()["error"]) == (400, "bad_json")
    await client.close()
    assert "Traceback" not in relay.stderr_text()


@pytest.mark.parametrize("token", ["x.%C3%A9", "%C3%A9", "a.b%00", "%FF.%FE"])
async def test_non_ascii_token_is_an_invalid_token(
    relay: RelayProcess, room: str, token: str
) -> None:
    client = await JsonClient.connect(relay.url(room, f"token={token}"))
    assert client.welcome["you"]
    await client.send(type="say", text="anonymous but served")
    await client.expect("message", text="anonymous but served")
    await client.close()
    assert "Traceback" not in relay.stderr_text()


async def test_invalid_utf8_frame_closes_1007_with_one_log_line(relay_factory) -> None:
    relay = relay_factory("--rate", "0")
    witness = await JsonClient.connect(relay.url("utf8"))
    for _ in range(3):
        async with websockets.connect(relay.url("utf8")) as bad:
            await recv(bad)
            await bad.send(b"caf\xc3(\xff", text=True)
            code, _ = await closed(bad)
            assert code == 1007
    await witness.send(type="say", text="unaffected")
    await witness.expect("message", text="unaffected")
    await witness.close()
    log = relay.stderr_text()
    assert "Traceback" not in log
    assert len([line for line in log.splitlines() if "UTF-8" in line]) == 3, log


async def test_tokens_never_reach_the_log(relay_factory) -> None:
    relay = relay_factory("--rate", "0", "--log-level", "trace")
    first = await JsonClient.connect(relay.url("logs"))
    token = first.welcome["token"]
    again = await JsonClient.connect(relay.url("logs", f"backlog=1&token={token}"))
    await again.close()
    await first.close()
    async with websockets.connect(relay.url("logs", f"x=1&%74oken={token}")) as ws:
        await recv(ws)
    for path in ("no/such/path", "bad%20room"):
        with contextlib.suppress(websockets.InvalidStatus):
            async with websockets.connect(relay.url(path, f"%74oken={token}&x=1")) as ws:
                await closed(ws)
    relay.stop()
    log = relay.stderr_text()
    assert "token=" in log and "backlog=1" in log, log
    assert token not in log and token.partition(".")[0] not in log
    assert token.partition(".")[2] not in log


@pytest.mark.parametrize("dots", [".", "..", "...", "%2E%2E"])
async def test_rooms_made_only_of_dots_are_refused(relay: RelayProcess, dots: str) -> None:
    async with websockets.connect(relay.url(dots.replace(".", "%2E"))) as ws:
        code, reason = await closed(ws)
    assert code == 1008 and "dots" in reason
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        path = f"/rooms/{dots.replace('.', '%2E')}/messages"
        for response in (
            await http.get(path),
            await http.post(path, json={"from": "b", "text": "x"}),
        ):
            assert (response.status_code, response.json()["error"]) == (400, "bad_room")
    async with websockets.connect(relay.url("a..b")) as ws:
        assert (await recv(ws)).endswith(":: joined the chat")


async def test_limit_zero_is_refused_over_http_and_websocket(
    relay: RelayProcess, room: str
) -> None:
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="history", limit=0)
    error = await client.expect("error")
    assert (error["code"], error["request"]) == ("bad_request", "history")
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        response = await http.get(f"/rooms/{room}/messages", params={"limit": 0})
        assert (response.status_code, response.json()["error"]) == (400, "bad_request")
        assert "limit" in response.json()["detail"]
        response = await http.get(f"/rooms/{room}/messages", params={"limit": 1})
        assert response.status_code == 200
    await client.close()


async def test_huge_numbers_in_queries_are_refused_plainly(relay_factory) -> None:
    relay = relay_factory("--rate", "0")
    huge = "9" * 5000
    for query in (f"since={huge}&epoch=x", f"backlog={huge}", f"since={'9' * 30}"):
        async with websockets.connect(relay.url("huge", query)) as ws:
            code, reason = await closed(ws)
        assert code == 1008 and "integer" in reason
    async with httpx.AsyncClient(base_url=relay.http, timeout=5) as http:
        for params in ({"before": huge}, {"limit": huge}, {"before": "9" * 30}):
            response = await http.get("/rooms/huge/messages", params=params)
            assert (response.status_code, response.json()["error"]) == (400, "bad_request")
    client = await JsonClient.connect(relay.url("huge"))
    for request in ({"before": 10**30}, {"limit": 10**30}, {"before": -(10**30)}):
        await client.send(type="history", **request)
        assert (await client.expect("history"))["messages"] == []
    await client.send(type="read", seq=10**30)
    await client.send(type="say", text="after huge numbers")
    await client.expect("message", text="after huge numbers")
    await client.close()
    assert "Traceback" not in relay.stderr_text()


async def test_long_utf8_names_fit_in_close_reasons(relay_factory) -> None:
    relay = relay_factory("--rate", "0")
    owner = await JsonClient.connect(relay.url("reasons"))
    wide = "\U0001d400" * 32
    await owner.send(type="nick", name=wide)
    await owner.expect("nick", new=wide)
    victim = await JsonClient.connect(relay.url("reasons"))
    await owner.send(type="kick", name=victim.welcome["you"])
    code, reason = await closed(victim.ws)
    assert code == 4001 and reason.startswith("kicked by \U0001d400")
    assert len(reason.encode()) <= 123
    member = await JsonClient.connect(relay.url("reasons"))
    await owner.send(type="close")
    code, reason = await closed(member.ws)
    assert code == 4002 and reason.startswith("room closed by \U0001d400")
    assert "Traceback" not in relay.stderr_text()
