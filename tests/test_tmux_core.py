"""End-to-end in tmux: the real `chat-tui` through a relay crash and an outage (tests/tmux.py)."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from tests.relayproc import JsonClient
from tests.test_tui_reconnect import free_port
from tests.tmux import Terminals


async def test_kill_9_and_restart_both_go_live_and_the_queue_is_sent_once(
    relay_factory, terminals: Terminals, room: str
) -> None:
    port = free_port()
    relay = relay_factory("--rate", "0", port=port)
    with httpx.Client() as http:
        for n in range(1, 6):
            url = f"{relay.http}/rooms/{room}/messages"
            http.post(url, json={"from": "carol", "text": f"backlog {n}"}).raise_for_status()
    address = f"ws://127.0.0.1:{port}"
    alice = terminals.chat_tui("--server", address, "connect", room, "--name", "alice")
    bob = terminals.chat_tui("--server", address, "connect", room, "--name", "bob")
    for terminal in (alice, bob):
        terminal.wait_for("● connected")
        terminal.wait_for("carol (via http) backlog 5")
    alice.wait_for("bob")

    relay.stop(signal.SIGKILL)
    alice.wait_for("reconnecting")
    alice.line("typed while down")
    alice.wait_for("queued until reconnected: typed while down")
    restarted = relay_factory("--rate", "0", port=port)
    alice.wait_for("● connected", timeout=30)
    bob.wait_for("● connected", timeout=30)
    bob.wait_for("alice typed while down")
    bob.line("after the restart")
    alice.wait_for("bob after the restart")
    for terminal in (alice, bob):
        screen = terminal.screen()
        assert screen.count("typed while down") == 1 + (terminal is alice), screen
        assert screen.count("could not be recovered") == 1, screen
        assert screen.count("carol (via http) backlog 5") == 1, screen

    reader = await JsonClient.connect(restarted.url(room, "backlog=50"))
    replay = [await reader.next() for _ in range(reader.welcome["replay"])]
    assert [e["text"] for e in replay].count("typed while down") == 1
    await reader.close()


async def test_an_outage_follows_the_backoff_and_logs_one_line(
    relay_factory, terminals: Terminals, room: str, tmp_path
) -> None:
    """The relay goes away after the client was connected, and its address then accepts and
    drops every connection: with the backoff capped at 2 s, five attempts take at least the
    schedule's minimum (0.25 + 0.5 + 1 + 1 s; it used to start over at 0.25-0.5 s every time),
    the room's log shows one line for the whole outage, and the status line names what failed
    and where."""
    port = free_port()
    relay = relay_factory("--rate", "0", port=port)
    home = tmp_path / "alice"
    (home / "config" / "chat-tui").mkdir(parents=True)
    (home / "config" / "chat-tui" / "config.toml").write_text("reconnect_max_seconds = 2.0\n")
    alice = terminals.chat_tui("--server", f"ws://127.0.0.1:{port}", "connect", room, home=home)
    alice.wait_for("● connected")
    stamps: list[float] = []
    enough = asyncio.Event()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stamps.append(time.monotonic())
        if len(stamps) >= 5:
            enough.set()
        writer.close()

    relay.stop(signal.SIGKILL)
    server = await asyncio.start_server(drop, "127.0.0.1", port)
    try:
        await asyncio.wait_for(enough.wait(), 60)
        elapsed = stamps[4] - stamps[0]
        assert elapsed >= 2.75, f"5 attempts in {elapsed:.2f}s"
        screen = await asyncio.to_thread(alice.wait_for, f"ws://127.0.0.1:{port}/chat/{room})")
        assert screen.count("cannot reach") == 1, screen
    finally:
        server.close()
        await server.wait_closed()
