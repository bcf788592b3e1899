"""Announcements: `POST /announce` and `chat-relay announce`, to every room, key required."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import pytest
import websockets

from tests.relayproc import JsonClient, RelayProcess
from tests.test_cli_plain import run_async, server
from tests.test_tui_app import SIZE, connected, has_line, make_app, until
from tui import access

KEY = "s3cret-announce-key"


# WebSocket clients present the key too (`?key=`): a relay with a key will ask every client
# for it (the access issue), not only announcements.
@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory):
    process = RelayProcess(tmp_path_factory.mktemp("keyed"), "--key", KEY, "--db", ":memory:")
    yield process
    process.stop()


def announce(relay: RelayProcess, text: str, **headers: str) -> httpx.Response:
    return httpx.post(f"{relay.http}/announce", json={"text": text}, headers=headers, timeout=5)


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_relay_without_a_key_refuses_every_announcement(relay: RelayProcess) -> None:
    response = announce(relay, "hello", **bearer())
    assert response.status_code == 403
    assert response.json()["error"] == "no_key"


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": f"Basic {KEY}"}])
def test_a_missing_or_wrong_key_is_401(keyed: RelayProcess, headers: dict[str, str]) -> None:
    response = announce(keyed, "hello", **headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_bad_bodies_are_refused(keyed: RelayProcess) -> None:
    url = f"{keyed.http}/announce"
    as_json = {**bearer(), "Content-Type": "application/json"}
    assert httpx.post(url, content=b"{", headers=as_json, timeout=5).status_code == 400
    assert httpx.post(url, json={"text": 5}, headers=bearer(), timeout=5).status_code == 400
    assert announce(keyed, "  ", **bearer()).json()["error"] == "empty"
    assert announce(keyed, "x" * 5000, **bearer()).status_code == 413


async def test_every_room_gets_it_in_both_protocols_and_history_does_not(
    keyed: RelayProcess, room: str
) -> None:
    other = f"{room}-b"
    alice = await JsonClient.connect(keyed.url(room, f"key={KEY}"))
    bob = await JsonClient.connect(keyed.url(other, f"key={KEY}"))
    plain = await websockets.connect(keyed.url(other, f"key={KEY}"))
    assert (await plain.recv()).endswith(":: joined the chat")

    response = await asyncio.to_thread(announce, keyed, "maintenance at 18:00", key=KEY)
    assert response.status_code == 401  # a header named "key" is not the key
    response = await asyncio.to_thread(
        httpx.post, f"{keyed.http}/announce?key={KEY}", json={"text": "maintenance at 18:00"}
    )
    assert response.status_code == 201
    body = response.json()
    assert body["type"] == "announce" and body["rooms"] >= 2

    for client, name in ((alice, room), (bob, other)):
        event = await client.expect("announce")
        assert event["room"] == name
        assert event["text"] == "maintenance at 18:00"
        assert event["id"] == body["id"] and event["ts"] == body["ts"]
    assert await plain.recv() == "* announcement: maintenance at 18:00"

    page = httpx.get(f"{keyed.http}/rooms/{room}/messages", headers=bearer(), timeout=5).json()
    assert page["messages"] == []
    for client in (alice, bob):
        await client.close()
    await plain.close()


async def test_the_cli_announces_and_reports(keyed: RelayProcess, room: str) -> None:
    watcher = await JsonClient.connect(keyed.url(room, f"key={KEY}"))
    command = [sys.executable, "-m", "relay", "announce", "deploy done"]
    command += ["--server", f"ws://127.0.0.1:{keyed.port}", "--key", KEY]
    result = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("announced to ")
    assert (await watcher.expect("announce"))["text"] == "deploy done"
    await watcher.close()


def test_the_cli_without_or_with_a_wrong_key_fails(keyed: RelayProcess) -> None:
    base = [sys.executable, "-m", "relay", "announce", "hi", "--server", keyed.http]
    env = {"PATH": "/usr/bin:/bin"}
    missing = subprocess.run(base, capture_output=True, text=True, timeout=20, env=env)
    assert missing.returncode == 2
    assert "--key" in missing.stderr
    wrong = subprocess.run([*base, "--key", "nope"], capture_output=True, text=True, timeout=20)
    assert wrong.returncode == 1
    assert "refused (401)" in wrong.stderr


async def test_plain_client_prints_the_announcement(keyed: RelayProcess, room: str, tmp_path):
    task = asyncio.create_task(
        run_async(
            ["--plain", "--key", KEY, "connect", room, "--count", "1", *server(keyed)],
            env_dir=tmp_path,
        )
    )
    sender = await JsonClient.connect(keyed.url(room, f"key={KEY}"))
    while (await sender.expect("join", timeout=20))["name"] == sender.welcome["you"]:
        pass
    assert (await asyncio.to_thread(announce, keyed, "tea time", **bearer())).is_success
    await sender.send(type="say", text="done")
    result = await task
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:1] == ["* announcement: tea time"]
    await sender.close()


async def test_tui_shows_the_announcement_apart_from_messages(keyed: RelayProcess, room: str):
    app = make_app(keyed, [room])
    access.configure(access.ClientAccess(KEY))
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: connected(app, room), what="connected")
            assert (await asyncio.to_thread(announce, keyed, "all hands", **bearer())).is_success
            await until(pilot, lambda: has_line(app, room, "announcement  all hands"), what="shown")
    finally:
        access.configure(access.ClientAccess())
