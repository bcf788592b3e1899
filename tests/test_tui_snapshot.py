"""Snapshot of the main screen at 100x30: two tabs, the sidebar and a conversation.

Everything that could vary is pinned: names come from tokens signed with the test relay's
secret, every timestamp comes from a fixed clock, and the relay's port is never shown.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx

from relay.tokens import TokenSigner
from tests.relayproc import JsonClient
from tests.test_tui_app import connected, has_line, make_app, until
from tui.clock import FixedClock
from tui.widgets.member_list import MemberList

SECRET = "snapshot-secret"
MOMENT = datetime(2026, 11, 23, 14, 5, tzinfo=timezone(timedelta(hours=1)))


def token(name: str) -> str:
    return TokenSigner(SECRET.encode()).issue(f"subject-{name}", name)


def demo_app(relay):
    """alice in #lobby and #dev; carol posted over HTTP, bob talks live in both rooms."""
    for text in ("build 1412 is green", "release notes are in the wiki"):
        url = f"{relay.http}/rooms/lobby/messages"
        httpx.post(url, json={"from": "ci-bot", "text": text}).raise_for_status()
    app = make_app(relay, ["lobby", "dev"], token=token("alice"), clock=FixedClock(MOMENT))
    clients: list[JsonClient] = []

    async def converse(pilot) -> None:
        await until(pilot, lambda: connected(app, "lobby", "dev"), what="connect")
        for room in ("lobby", "dev"):
            clients.append(await JsonClient.connect(relay.url(room, f"token={token('bob')}")))
        await until(pilot, lambda: "bob" in app.screen.query_one(MemberList).names)
        lobby, dev = clients
        await lobby.send(type="say", text="morning alice! did the [bold]deploy[/bold] go out?")
        await until(pilot, lambda: has_line(app, "lobby", "did the [bold]deploy"))
        app.screen.query_one("ChatInput").value = "yes, 10 minutes ago"
        await pilot.press("enter")
        await until(pilot, lambda: has_line(app, "lobby", "alice yes, 10 minutes ago"))
        await dev.send(type="say", text="alice: can you review #42?")
        await until(pilot, lambda: has_line(app, "dev", "review #42"))
        # A blinking cursor would make the picture depend on when it is taken.
        app.screen.query_one("ChatInput").cursor_blink = False
        await pilot.pause()

    return app, converse


def test_main_screen_snapshot(snap_compare, relay_factory):
    relay = relay_factory("--secret", SECRET, "--rate", "0", "--db", ":memory:")
    app, converse = demo_app(relay)
    assert snap_compare(app, terminal_size=(100, 30), run_before=converse)
