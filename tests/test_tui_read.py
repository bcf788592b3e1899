"""Read markers in the client: unread counts follow the user across devices; "seen by" names."""

from __future__ import annotations

import asyncio

from tests.relayproc import JsonClient
from tests.test_cli_plain import run_async, server
from tests.test_tui_app import (
    SIZE,
    connected,
    has_line,
    lines,
    make_app,
    tab_label,
    type_line,
    until,
)
from tui.app import ChatApp
from tui.receipts import ReadReceipts


def seen_line(app: ChatApp, room: str) -> str:
    label = app.screen.panes[room].seen_label
    return str(label.render()) if label.display else ""


async def test_reading_on_one_device_clears_unread_on_the_other(relay, room):
    lobby = room + "-lobby"
    first = make_app(relay, [lobby, room])
    async with first.run_test(size=SIZE) as p1:
        await until(p1, lambda: connected(first, lobby, room), what="first device")
        me = first.identity.name
        second = make_app(relay, [lobby, room], token=first.identity.token)
        async with second.run_test(size=SIZE) as p2:
            await until(p2, lambda: connected(second, lobby, room), what="second device")
            assert second.identity.name == me
            other = await JsonClient.connect(relay.url(room))
            await other.send(type="say", text=f"hi {me}")
            said = await other.expect("message")
            await until(p1, lambda: tab_label(first, room) == f"#{room} 1 @", what="unread 1")
            await until(p2, lambda: tab_label(second, room) == f"#{room} 1 @", what="unread 2")

            await p1.press("alt+2")
            await other.expect("read", name=me, seq=said["seq"])
            await until(p2, lambda: tab_label(second, room) == f"#{room}", what="cleared")
            assert has_line(second, room, f"hi {me}")

            # A device that connects later counts only what lies past the marker.
            await p1.press("alt+1")
            await until(p1, lambda: first.screen.active_pane().key == lobby)
            await other.send(type="say", text="after the marker")
            await until(p2, lambda: tab_label(second, room) == f"#{room} 1", what="new unread")
            third = make_app(relay, [lobby, room], token=first.identity.token)
            async with third.run_test(size=SIZE) as p3:
                await until(p3, lambda: has_line(third, room, "after the marker"), what="replay")
                assert has_line(third, room, f"hi {me}")
                assert tab_label(third, room) == f"#{room} 1"
            await other.close()


async def test_seen_by_names_who_read_your_latest_message(relay, room):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room))
        bob = await JsonClient.connect(relay.url(room))
        carol = await JsonClient.connect(relay.url(room))
        bob_name, carol_name = bob.welcome["you"], carol.welcome["you"]
        await bob.send(type="say", text="earlier")
        earlier = await carol.expect("message", text="earlier")
        await type_line(pilot, "did you see this?")
        mine = await carol.expect("message", text="did you see this?")
        await until(pilot, lambda: has_line(app, room, "did you see this?"))
        entries = app.screen.panes[room].chat_log.entry_count

        # Bob read only up to the message before yours: he has not seen it.
        await bob.send(type="read", seq=earlier["seq"])
        await bob.expect("read", name=bob_name)
        await carol.send(type="read", seq=mine["seq"])
        await until(pilot, lambda: seen_line(app, room) == f"✓ seen by {carol_name}")
        await bob.send(type="read", seq=mine["seq"])
        both = ", ".join(sorted([bob_name, carol_name], key=str.casefold))
        await until(pilot, lambda: seen_line(app, room) == f"✓ seen by {both}", what="both")
        assert app.screen.panes[room].chat_log.entry_count == entries

        await type_line(pilot, "a newer one")
        await until(pilot, lambda: seen_line(app, room) == "", what="reset by a newer message")
        assert sum("newer one" in line for line in lines(app, room)) == 1
        await bob.close()
        await carol.close()


async def test_plain_mode_prints_read_events_as_system_lines(relay, room, tmp_path):
    watcher = await JsonClient.connect(relay.url(room))
    name = watcher.welcome["you"]
    await watcher.expect("join", name=name)
    results = []
    for events in (["--events"], []):
        args = ["--plain", "connect", room, "--count", "2", *events, *server(relay)]
        env_dir = tmp_path / str(len(results))
        task = asyncio.create_task(run_async(args, stdin="mine\n", env_dir=env_dir))
        joined = await watcher.expect("join", timeout=15)
        mine = await watcher.expect("message", text="mine", timeout=15)
        # The plain client wrote the message this marker covers, so the relay tells it.
        await watcher.send(type="read", seq=mine["seq"])
        await watcher.send(type="say", text="done")
        result = await task
        assert result.returncode == 0, result.stderr
        expected = [f"{joined['name']} :: mine", f"{name} :: done"]
        results.append((result, f"* {name} read up to seq {mine['seq']}", expected))
        await watcher.expect("leave", name=joined["name"], timeout=15)
    (with_events, first_line, _), (without, second_line, expected) = results
    assert first_line in with_events.stdout.splitlines()
    assert without.stdout.splitlines() == expected
    assert second_line in without.stderr.splitlines()
    await watcher.close()


async def test_a_burst_of_messages_is_reported_read_at_most_once_a_second(relay, room):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room))
        me = app.identity.name
        other = await JsonClient.connect(relay.url(room))
        for n in range(5):
            await other.send(type="say", text=f"burst {n}")
        last = await other.expect("message", text="burst 4")
        await other.expect("read", name=me, seq=last["seq"], timeout=10)
        reads = [e for e in other.seen if e.get("type") == "read" and e.get("name") == me]
        assert len(reads) <= 2
        await other.close()


def test_reports_are_debounced_and_only_when_the_seq_grew():
    receipts = ReadReceipts(interval=1.0)
    assert receipts.wanted() is None
    receipts.shown(3, own=False)
    assert receipts.wanted() == 3
    assert receipts.wait(now=10.0) == 0.0
    receipts.sent(3, now=10.0)
    assert receipts.wanted() is None
    receipts.shown(4, own=False)
    assert receipts.wanted() == 4
    assert receipts.wait(now=10.25) == 0.75
    assert receipts.wait(now=11.0) == 0.0
    receipts.read_by_me(5)
    assert receipts.wanted() is None


def test_unread_is_what_lies_past_the_marker():
    receipts = ReadReceipts()
    for seq, mention in ((1, True), (2, False), (3, False)):
        receipts.count_unread(seq, mention)
    receipts.read_by_me(1)
    assert (len(receipts.unread), receipts.mentioned) == (2, False)
    receipts.read_by_me(3)
    assert receipts.unread == []
