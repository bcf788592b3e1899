"""Input the relay refuses at the door: one bad frame must never freeze delivery for anybody."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import websockets

from tests.relayproc import JsonClient, RelayProcess


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
