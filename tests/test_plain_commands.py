"""Commands for bare WebSocket clients, and the `cid` echoed on every answer to its sender."""

from __future__ import annotations

import asyncio

import websockets

from tests.relayproc import JsonClient, RelayProcess


async def recv(ws: websockets.ClientConnection, timeout: float = 5.0) -> str:
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str)
    return message


async def until_line(ws: websockets.ClientConnection, start: str) -> str:
    while True:
        line = await recv(ws)
        if line.startswith(start):
            return line


async def test_a_plain_client_answers_a_dm_request_and_uses_commands(
    relay: RelayProcess, room: str
) -> None:
    asker = await JsonClient.connect(relay.url(room))
    async with websockets.connect(relay.url(room)) as bare:
        name = (await recv(bare)).split(" :: ")[0]
        await bare.send(f"/nick plain-{room}")
        assert await until_line(bare, name) == f"{name} :: is now known as plain-{room}"
        await asker.send(type="dm", to=f"plain-{room}", text="psst")
        request = await until_line(bare, asker.welcome["you"])
        assert request.endswith(
            f"wants to send you private messages (/accept {asker.welcome['you']})"
        )
        await bare.send(f"/accept {asker.welcome['you']}")
        await asker.expect("dm_accepted", by=f"plain-{room}")
        assert await recv(bare) == f"{asker.welcome['you']} -> plain-{room} :: psst"
        await bare.send(f"/msg {asker.welcome['you']} hello back")
        dm = await asker.expect("dm", text="hello back")
        assert dm["from"] == f"plain-{room}"
        await bare.send("/who")
        assert (await until_line(bare, "* members")).startswith("* members: ")
        await bare.send("/nope")
        assert (await until_line(bare, "* error")).startswith(
            "* error bad_request: unknown command"
        )
        await bare.send("/decline nobody")
        assert await until_line(bare, "* error") == (
            "* error bad_request: no pending request from nobody"
        )
        await bare.send("//slash text")
        assert await until_line(bare, f"plain-{room} ::") == f"plain-{room} :: /slash text"
        await bare.send("/help")
        assert (await until_line(bare, "* commands")).startswith("* commands: /nick NAME")
    await asker.close()


async def test_answers_to_the_sender_echo_its_cid(relay_factory, room: str) -> None:
    relay = relay_factory("--rate", "0.01", "--burst", "2")
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="who", cid="w1")
    assert (await client.expect("members"))["cid"] == "w1"
    await client.send(type="history", cid="h1")
    assert (await client.expect("history"))["cid"] == "h1"
    await client.send(type="say", text="too fast", cid="s1")
    error = await client.expect("error", code="rate_limited")
    assert (error["request"], error["cid"]) == ("say", "s1")
    await client.close()


async def test_plain_commands_lose_their_line_break_and_pass_the_text_checks(
    relay: RelayProcess, room: str
) -> None:
    """A websocat line ends with a line break; a command's fields are checked like JSON ones."""
    async with websockets.connect(relay.url(room)) as bare:
        await recv(bare)
        await bare.send("/who\r\n")
        assert (await until_line(bare, "* ")).startswith("* members: ")
        await bare.send("/msg some\x1b[2Jone hi\n")
        line = await until_line(bare, "* ")
        assert line.startswith("* error bad_text: 'to': ") and "\x1b" not in line


async def test_a_cid_that_fails_the_text_checks_is_not_echoed(relay: RelayProcess, room: str):
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="who", cid="w\x1b[2J")
    error = await client.expect("error", code="bad_text")
    assert error["request"] == "who" and "cid" not in error
    await client.close()
