"""The SQLite store across relay restarts and crashes, against the promise in docs/operations.md."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import websockets

from tests.relayproc import JsonClient, RelayProcess, messages_until, seqs

# docs/operations.md, "Durable store": a message whose echo reached its sender at least this long
# before the relay process died is in the database after the restart.
PROMISE_SECONDS = 0.1


async def all_messages(relay: RelayProcess, room: str) -> list[dict]:
    """Every message the relay serves for `room`, oldest first, paging back over HTTP."""
    pages: list[dict] = []
    before: int | None = None
    async with httpx.AsyncClient(base_url=relay.http) as http:
        while True:
            params = {"limit": 200} | ({} if before is None else {"before": before})
            page = (await http.get(f"/rooms/{room}/messages", params=params)).json()["messages"]
            pages[:0] = page
            if len(page) < 200:
                return pages
            before = page[0]["seq"]


async def test_restart_keeps_history_seq_epoch_and_resume(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    relay = relay_factory("--rate", "0", "--db", db)
    alice = await JsonClient.connect(relay.url("r"))
    reader = await JsonClient.connect(relay.url("r"))
    for i in range(1, 6):
        await alice.send(type="say", text=f"before {i}")
    assert seqs(await messages_until(reader, 5)) == [1, 2, 3, 4, 5]
    epoch = reader.welcome["epoch"]
    await reader.close()
    for i in range(6, 9):
        await alice.send(type="say", text=f"missed {i}")
    await alice.expect("message", seq=8)
    await alice.close()
    assert relay.stop() == 0

    relay = relay_factory("--rate", "0", "--db", db)
    back = await JsonClient.connect(relay.url("r", f"since=5&epoch={epoch}"))
    assert (back.welcome["epoch"], back.welcome["seq"]) == (epoch, 8)
    assert back.welcome["recovered"] is True
    assert back.welcome["replay"] == 3
    replay = await messages_until(back, 8)
    assert [m["text"] for m in replay] == ["missed 6", "missed 7", "missed 8"]
    await back.send(type="say", text="after")
    assert (await back.expect("message"))["seq"] == 9
    assert seqs(await all_messages(relay, "r")) == list(range(1, 10))
    await back.close()


async def test_identity_keeps_its_name_across_restart(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path, room: str
) -> None:
    db = str(tmp_path / "chat.db")
    relay = relay_factory("--db", db)
    client = await JsonClient.connect(relay.url(room))
    await client.send(type="nick", name="durable-dana")
    await client.expect("nick", new="durable-dana")
    await client.close()
    assert relay.stop() == 0

    relay = relay_factory("--db", db)
    again = await JsonClient.connect(relay.url(room, f"token={client.welcome['token']}"))
    assert again.welcome["you"] == "durable-dana"
    await again.close()


async def test_memory_store_forgets(relay_factory: Callable[..., RelayProcess]) -> None:
    relay = relay_factory("--db", ":memory:")
    client = await JsonClient.connect(relay.url("r"))
    await client.send(type="say", text="gone after restart")
    await client.expect("message", seq=1)
    await client.close()
    relay.stop()
    relay = relay_factory("--db", ":memory:")
    assert await all_messages(relay, "r") == []


async def test_kill_9_keeps_every_message_echoed_within_the_promise(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    relay = relay_factory("--rate", "0", "--history", "100000", "--db", db)
    echoed: dict[int, float] = {}
    texts: dict[int, str] = {}
    epochs: set[str] = set()
    enough = asyncio.Event()

    async def stream(sender: int) -> None:
        """Closed loop: send, wait for the echo, note when it arrived."""
        client = await JsonClient.connect(relay.url("r"))
        epochs.add(client.welcome["epoch"])
        count = 0
        try:
            while True:
                count += 1
                text = f"{sender}:{count}"
                await client.send(type="say", text=text)
                event = await client.expect("message", text=text)
                echoed[event["seq"]] = time.monotonic()
                texts[event["seq"]] = text
                if len(echoed) >= 1500:
                    enough.set()
        except (websockets.ConnectionClosed, TimeoutError):
            return

    streams = [asyncio.create_task(stream(sender)) for sender in range(4)]
    async with asyncio.timeout(30):
        await enough.wait()
    killed_at = time.monotonic()
    relay.stop(signal.SIGKILL)
    await asyncio.gather(*streams)

    relay = relay_factory("--rate", "0", "--history", "100000", "--db", db)
    survived = await all_messages(relay, "r")
    got = seqs(survived)
    assert got == list(range(1, len(got) + 1)), "seqs are contiguous from 1, without duplicates"
    assert len({m["id"] for m in survived}) == len(got)
    assert all(m["text"] == texts[m["seq"]] for m in survived if m["seq"] in texts)
    promised = [seq for seq, at in echoed.items() if at <= killed_at - PROMISE_SECONDS]
    assert promised and max(promised) <= len(got), (
        f"lost {max(promised) - len(got)} messages echoed over {PROMISE_SECONDS}s before kill -9"
    )
    # The crash may have lost seqs that clients saw, so the relay starts a new epoch.
    client = await JsonClient.connect(relay.url("r"))
    assert client.welcome["seq"] == len(got)
    await client.send(type="say", text="after the crash")
    assert (await client.expect("message", text="after the crash"))["seq"] == len(got) + 1
    assert client.welcome["epoch"] not in epochs
    await client.close()


async def test_retain_messages_caps_what_survives(
    relay_factory: Callable[..., RelayProcess], tmp_path: Path
) -> None:
    db = str(tmp_path / "chat.db")
    relay = relay_factory("--db", db, "--retain-messages", "5")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        for i in range(1, 13):
            body = {"from": "bot", "text": f"post {i}"}
            assert (await http.post("/rooms/ops/messages", json=body)).status_code == 201
    assert seqs(await all_messages(relay, "ops")) == [8, 9, 10, 11, 12]
    relay.stop()
    relay = relay_factory("--db", db, "--retain-messages", "5")
    assert seqs(await all_messages(relay, "ops")) == [8, 9, 10, 11, 12]
    relay.stop()
    relay = relay_factory("--db", db, "--retain-messages", "2")
    assert seqs(await all_messages(relay, "ops")) == [11, 12]
