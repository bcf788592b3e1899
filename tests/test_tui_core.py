"""The full-screen client over the client core: refusals, owner commands, outages, crashes."""

from __future__ import annotations

import asyncio
import signal

import pytest
from textual.widgets import Button

from tests.relayproc import JsonClient, closed
from tests.test_tui_app import SIZE, connected, has_line, lines, make_app, type_line, until
from tests.test_tui_reconnect import free_port, message_counts, status
from tui.client.link import RoomLink
from tui.screens.confirm import ConfirmScreen
from tui.widgets.status_bar import StatusBar


def bar(app) -> str:
    return str(app.screen.query_one(StatusBar).render())


async def test_accept_nobody_then_a_message_blames_only_the_accept(relay, room):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        await type_line(pilot, "/accept nobody-at-all")
        await type_line(pilot, "hello after")
        await until(pilot, lambda: has_line(app, room, f"{app.identity.name} hello after"))
        await until(pilot, lambda: has_line(app, room, "(/accept nobody-at-all)"), what="error")
        assert not any("not sent" in line for line in lines(app, room)), lines(app, room)


async def test_msg_to_nobody_shows_the_error_and_opens_no_tab(relay, room):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        await type_line(pilot, "/msg nobody-ever hi there")
        await until(pilot, lambda: has_line(app, room, "no_such_user"), what="error")
        assert has_line(app, room, "(not sent to nobody-ever: hi there)")
        assert "@nobody-ever" not in app.screen.panes


async def test_owner_kicks_and_closes_from_the_tui(relay, room):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        other = await JsonClient.connect(relay.url(room))
        await type_line(pilot, f"/kick {other.welcome['you']}")
        assert (await closed(other.ws))[0] == 4001
        await until(pilot, lambda: has_line(app, room, f"kicked {other.welcome['you']}"))
        await type_line(pilot, "/close")
        await until(pilot, lambda: has_line(app, room, "the room was closed by its owner"))


async def test_a_declined_dm_request_drops_its_prompt(relay, room):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        other = await JsonClient.connect(relay.url(room))
        asker = other.welcome["you"]
        await other.send(type="dm", to=app.identity.name, text="psst")
        await until(pilot, lambda: has_line(app, "@" + asker, "/decline"), what="prompt")
        app.screen.action_goto_tab(2)
        await type_line(pilot, "/decline")
        await other.expect("dm_declined")
        assert not has_line(app, "@" + asker, "wants to send you")
        assert has_line(app, "@" + asker, f"you declined {asker}")
        await other.close()


async def test_an_outage_is_one_log_line_and_a_status_saying_what_and_where(room):
    """The relay accepts TCP and drops it at once, forever: the backoff grows, the status line
    names the failure and the URL, and the room's log gains a single line for the outage."""
    attempts = 0
    enough = asyncio.Event()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        if attempts >= 4:
            enough.set()
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    class Relay:
        pass

    fake = Relay()
    fake.port = port  # type: ignore[attr-defined]
    app = make_app(fake, [room])
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, enough.is_set, timeout=20, what="four attempts")
            await until(pilot, lambda: f"ws://127.0.0.1:{port}/chat/{room}" in bar(app))
            assert len(lines(app, room)) == 1, lines(app, room)
            assert lines(app, room)[0].startswith(f"cannot reach ws://127.0.0.1:{port}/chat/")
    finally:
        server.close()
        await server.wait_closed()


async def test_relay_down_at_start_says_connection_refused_and_where(room):
    port = free_port()

    class Relay:
        pass

    fake = Relay()
    fake.port = port  # type: ignore[attr-defined]
    app = make_app(fake, [room])
    async with app.run_test(size=SIZE) as pilot:
        where = f"ws://127.0.0.1:{port}/chat/{room}"
        await until(pilot, lambda: "connection refused" in bar(app) and where in bar(app))
        assert has_line(app, room, f"cannot reach {where}: connection refused")


async def test_clients_go_live_after_the_relay_is_killed(relay_factory, room):
    """Bug 1 in the app: SIGKILL, restart on the same port and state dir (a new epoch that
    replays messages already shown): both go live, the queued line is sent once, one gap line."""
    port = free_port()
    first = relay_factory("--rate", "0", port=port)
    a, b = make_app(first, [room]), make_app(first, [room])
    async with a.run_test(size=SIZE) as pa, b.run_test(size=SIZE) as pb:
        await until(pa, lambda: connected(a, room) and connected(b, room), what="connect")
        name_a = a.identity.name
        await type_line(pa, "before the crash")
        await until(pb, lambda: has_line(b, room, "before the crash"), what="live")
        first.stop(signal.SIGKILL)
        await until(pa, lambda: status(a) == "reconnecting", what="a down")
        await type_line(pa, "typed while down")
        relay_factory("--rate", "0", port=port)
        await until(pa, lambda: connected(a, room), timeout=20, what="a live again")
        await until(pb, lambda: connected(b, room), timeout=20, what="b live again")
        await until(pb, lambda: has_line(b, room, f"{name_a} typed while down"), what="queued")
        await type_line(pb, "after the crash")
        await until(pa, lambda: has_line(a, room, "after the crash"), what="a receives")
        for app in (a, b):
            counts = message_counts(app, room, name_a, b.identity.name)
            assert counts[f"{name_a} typed while down"] == 1, lines(app, room)
            assert counts[f"{name_a} before the crash"] == 1, lines(app, room)
            gaps = [line for line in lines(app, room) if "could not be recovered" in line]
            assert len(gaps) == 1, lines(app, room)


async def test_quit_with_unsent_lines_asks_first(relay_factory, room):
    port = free_port()
    relay = relay_factory("--rate", "0", port=port)
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        relay.stop()
        await until(pilot, lambda: status(app) == "reconnecting", what="down")
        await type_line(pilot, "not sent yet")
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="question")
        assert "1 line is not sent yet" in app.screen.question.plain
        assert str(app.screen.query_one("#yes", Button).label) == "Quit (y)"
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="kept")
        assert app.is_running
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="asked again")
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, what="exit")


async def test_a_link_worker_that_raises_is_shown_and_restarted(relay, room, monkeypatch):
    """Fault injection: the link's session raises once, as a bug would. The tab says so and the
    link comes back instead of dying silently."""
    original = RoomLink._session
    failures = []

    async def broken(self: RoomLink, ws) -> None:
        if not failures:
            failures.append(self.room)
            raise RuntimeError("injected failure")
        await original(self, ws)

    monkeypatch.setattr(RoomLink, "_session", broken)
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: has_line(app, room, "injected failure"), what="shown")
        assert has_line(app, room, "connection failed (RuntimeError: injected failure)")
        await until(pilot, lambda: connected(app, room), timeout=15, what="restarted")


@pytest.mark.parametrize("command", ["/kick", "/close"])
async def test_owner_commands_need_a_room_tab(relay, room, command):
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        other = await JsonClient.connect(relay.url(room))
        await other.send(type="dm", to=app.identity.name, text="psst")
        await until(pilot, lambda: "@" + other.welcome["you"] in app.screen.panes, what="dm")
        app.screen.action_goto_tab(2)
        await type_line(pilot, f"{command} x".strip() if command == "/kick" else command)
        await until(pilot, lambda: has_line(app, "@" + other.welcome["you"], "works in a room"))
        await other.close()
