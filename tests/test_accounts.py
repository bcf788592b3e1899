"""Registered names: register, log in from another device, throttling, expiry and revocation."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import websockets

from relay.tokens import TokenSigner, _b64
from shared.protocol import SUBPROTOCOL
from tests.relayproc import JsonClient, RelayProcess, closed
from tests.test_cli_plain import run_async

PASSWORD = "correct horse battery"
SECRET = "accounts-test-secret"


async def registered(relay: RelayProcess, room: str, name: str) -> JsonClient:
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="nick", name=name)
    await client.expect("nick", new=name)
    await client.send(type="register", password=PASSWORD)
    event = await client.expect("registered", timeout=10)
    assert event["name"] == name and event["token"]
    return client


async def login(relay: RelayProcess, name: str, password: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        return await http.post("/login", json={"name": name, "password": password})


async def test_register_over_websocket(relay: RelayProcess, room: str) -> None:
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="nick", name=f"reg-{room}")
    await client.expect("nick")
    await client.send(type="register", password="short")
    error = await client.expect("error")
    assert (error["code"], error["request"]) == ("bad_password", "register")
    await client.send(type="register", password=PASSWORD)
    await client.send(type="register", password=PASSWORD)  # while the first is hashed
    assert (await client.expect("error"))["code"] == "registered"
    event = await client.expect("registered", timeout=10)
    assert event["name"] == f"reg-{room}"
    assert PASSWORD not in str(event)
    await client.send(type="register", password=PASSWORD)
    assert (await client.expect("error"))["code"] == "registered"
    await client.send(type="nick", name=f"other-{room}")
    assert (await client.expect("error"))["code"] == "registered"
    await client.close()


async def test_wrong_and_right_password(relay_factory, room: str) -> None:
    relay = relay_factory()  # its own relay: logins from 127.0.0.1 are throttled per address
    client = await registered(relay, room, f"pw-{room}")
    wrong = await login(relay, f"pw-{room}", "not the password")
    assert (wrong.status_code, wrong.json()["error"]) == (401, "bad_login")
    unknown = await login(relay, f"nobody-{room}", PASSWORD)
    assert (unknown.status_code, unknown.json()) == (401, wrong.json())
    right = await login(relay, f"pw-{room}", PASSWORD)
    assert right.status_code == 200
    assert right.json()["name"] == f"pw-{room}" and PASSWORD not in right.text
    await client.close()
    assert PASSWORD not in relay.stderr_text()


async def test_two_devices_are_one_user(relay: RelayProcess, room: str, tmp_path) -> None:
    name = f"multi-{room}"
    laptop = await registered(relay, room, name)
    friend = await JsonClient.connect(relay.url(room))
    await friend.send(type="dm", to=name, text="hi both")
    await laptop.expect("dm_request")
    await laptop.send(type="dm_accept", **{"from": friend.welcome["you"]})
    await laptop.expect("dm", text="hi both")
    await laptop.send(type="say", text="marker")
    seq = (await laptop.expect("message", text="marker"))["seq"]
    await laptop.send(type="read", seq=seq)
    await laptop.expect("read")
    # The phone logs in with chat-tui (password on stdin) and connects with the stored token.
    result = await run_async(
        ["login", name, "--server", f"ws://127.0.0.1:{relay.port}"],
        stdin=PASSWORD + "\n",
        env_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert f"logged in as {name}" in result.stdout
    result = await run_async(
        ["--plain", "connect", room, "--server", f"ws://127.0.0.1:{relay.port}"],
        stdin="from my phone\n",
        env_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    said = await friend.expect("message", text="from my phone")
    assert said["from"] == name
    token = (await login(relay, name, PASSWORD)).json()["token"]
    phone = await JsonClient.connect(relay.url(room, f"token={token}"))
    assert phone.welcome["you"] == name and phone.welcome["read"] == seq
    await friend.send(type="dm", to=name, text="to both devices")
    for device in (laptop, phone):
        await device.expect("dm", text="to both devices")
    for client in (laptop, phone, friend):
        await client.close()


async def test_a_registered_name_is_never_taken(relay_factory) -> None:
    relay = relay_factory("--rate", "0", env={"CHAT_RELAY_NAME_GRACE": "0"})
    owner = await registered(relay, "lobby", "carol")
    await owner.close()
    mallory = await JsonClient.connect(relay.url("lobby"))
    for name in ("carol", "CAROL", "caro1"):
        await mallory.send(type="nick", name=name)
        assert (await mallory.expect("error"))["code"] == "name_taken", name
    async with httpx.AsyncClient(base_url=relay.http) as http:
        response = await http.post("/rooms/lobby/messages", json={"from": "carol", "text": "me"})
        assert response.status_code == 409
        response = await http.post("/register", json={"name": "Carol", "password": PASSWORD})
        assert (response.status_code, response.json()["error"]) == (409, "name_taken")
    await mallory.close()
    relay.stop()
    again = relay_factory("--rate", "0", env={"CHAT_RELAY_NAME_GRACE": "0"})
    response = await login(again, "carol", PASSWORD)
    assert response.status_code == 200
    back = await JsonClient.connect(again.url("lobby", f"token={response.json()['token']}"))
    assert back.welcome["you"] == "carol"
    await back.close()


async def test_login_attempts_are_throttled(relay_factory) -> None:
    relay = relay_factory()
    owner = await registered(relay, "lobby", "dora")
    statuses = [(await login(relay, "dora", "guess-number-x")).status_code for _ in range(6)]
    assert statuses == [401] * 5 + [429]
    # The address has spent its allowance too: another name from here waits as well.
    assert (await login(relay, "someone-else", "whatever-pw")).status_code == 429
    await owner.close()


async def test_register_from_a_script(relay: RelayProcess, room: str, tmp_path) -> None:
    server = ["--server", f"ws://127.0.0.1:{relay.port}"]
    result = await run_async(
        ["register", "--name", f"bot-{room}", *server], stdin=PASSWORD + "\n", env_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert f"registered as bot-{room}" in result.stdout
    watcher = await JsonClient.connect(relay.url(room))
    result = await run_async(
        ["--plain", "connect", room, *server], stdin="beep\n", env_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (await watcher.expect("message", text="beep"))["from"] == f"bot-{room}"
    result = await run_async(["register", *server], stdin=PASSWORD + "\n", env_dir=tmp_path)
    assert result.returncode == 1 and "already registered" in result.stderr
    await watcher.close()


async def test_logout_everywhere_revokes_every_token(relay_factory, room: str) -> None:
    relay = relay_factory()
    name = f"out-{room}"
    laptop = await registered(relay, room, name)
    token = (await login(relay, name, PASSWORD)).json()["token"]
    phone = await JsonClient.connect(relay.url(room, f"token={token}"))
    await laptop.send(type="logout_everywhere")
    for device in (laptop, phone):
        assert await closed(device.ws) == (1008, "logged out everywhere: log in again")
    stale = await websockets.connect(relay.url(room, f"token={token}"), subprotocols=[SUBPROTOCOL])
    assert await closed(stale) == (1008, "token revoked: log in again")
    fresh = (await login(relay, name, PASSWORD)).json()["token"]
    back = await JsonClient.connect(relay.url(room, f"token={fresh}"))
    assert back.welcome["you"] == name
    await back.close()


async def test_logout_everywhere_needs_an_account(relay: RelayProcess, room: str) -> None:
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="logout_everywhere")
    assert (await client.expect("error"))["code"] == "not_registered"
    await client.close()


async def test_admin_revokes_tokens(relay_factory, tmp_path) -> None:
    relay = relay_factory("--rate", "0")
    owner = await registered(relay, "lobby", "erin")
    token = owner.welcome["token"]
    await owner.close()
    revoke = [sys.executable, "-m", "relay", "tokens", "revoke", "erin"]
    result = await asyncio.to_thread(
        subprocess.run,
        [*revoke, "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    stale = await websockets.connect(
        relay.url("lobby", f"token={token}"), subprotocols=[SUBPROTOCOL]
    )
    assert await closed(stale) == (1008, "token revoked: log in again")
    # chat-tui holding the revoked token stops and says why.
    server = f"ws://127.0.0.1:{relay.port}"
    identity = tmp_path / "client" / "state" / "chat-tui" / "identity.json"
    identity.parent.mkdir(parents=True)
    identity.write_text(json.dumps({server: token}))
    result = await run_async(
        ["--plain", "connect", "lobby", "--server", server], env_dir=tmp_path / "client"
    )
    assert result.returncode == 1
    assert "token revoked: log in again" in result.stderr


async def _admin_revoke(name: str, state: str) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "relay", "tokens", "revoke", name, "--state-dir", state],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


async def test_admin_revoke_closes_open_connections(relay_factory, tmp_path) -> None:
    """The running relay notices the CLI's revocation in accounts.db within a few seconds."""
    relay = relay_factory("--rate", "0")
    state = str(tmp_path / "state")
    holly = await registered(relay, "lobby", "holly")
    ivan = await registered(relay, "lobby", "ivan")
    bystander = await JsonClient.connect(relay.url("lobby"))
    await _admin_revoke("holly", state)
    assert await closed(holly.ws, timeout=10) == (1008, "token revoked: log in again")
    await bystander.expect("leave", name="holly")
    # Logged in again after the revocation: a new token, not cut by the next check.
    fresh_token = (await login(relay, "holly", PASSWORD)).json()["token"]
    fresh = await JsonClient.connect(relay.url("lobby", f"token={fresh_token}"))
    assert fresh.welcome["you"] == "holly"
    await _admin_revoke("ivan", state)
    assert await closed(ivan.ws, timeout=10) == (1008, "token revoked: log in again")
    # A check ran after `fresh` joined (it cut ivan): holly's new connection and the
    # bystander are still served.
    for client in (fresh, bystander):
        await client.send(type="who")
        members = await client.expect("members")
        assert sorted(members["members"]) == sorted(["holly", bystander.welcome["you"]])
    await fresh.close()
    await bystander.close()


def _old_token(subject: str, name: str, issued: float) -> str:
    payload = _b64(f"{subject}\n{name}\n{int(issued)}\n0".encode())
    return payload + "." + TokenSigner(SECRET.encode())._mac(payload)


async def test_expired_tokens(relay_factory) -> None:
    relay = relay_factory("--secret", SECRET, "--token-days", "1")
    owner = await registered(relay, "lobby", "fred")
    subject = TokenSigner(SECRET.encode()).claims(owner.welcome["token"]).subject
    await owner.close()
    two_days_ago = time.time() - 2 * 86400
    stale = await websockets.connect(
        relay.url("lobby", f"token={_old_token(subject, 'fred', two_days_ago)}"),
        subprotocols=[SUBPROTOCOL],
    )
    assert await closed(stale) == (1008, "token expired: log in again")
    anonymous = _old_token("0123456789abcdef", "gina", two_days_ago)
    fresh = await JsonClient.connect(relay.url("lobby", f"token={anonymous}"))
    assert fresh.welcome["you"] != "gina"  # an expired anonymous token starts afresh
    await fresh.close()
