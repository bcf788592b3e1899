"""Pilot tests of the full-screen client against a real relay process."""

from __future__ import annotations

import time

import httpx
from textual import events

from tests.relayproc import JsonClient
from tui.app import ChatApp
from tui.config import Config
from tui.screens.confirm import ConfirmScreen
from tui.widgets.chat_input import ChatInput
from tui.widgets.member_list import MemberList
from tui.widgets.status_bar import StatusBar

SIZE = (100, 30)


def make_app(relay, rooms, **kwargs) -> ChatApp:
    config = Config(server=f"ws://127.0.0.1:{relay.port}", bell=False, notify=False)
    config.reconnect_max_seconds = 1.0
    kwargs.setdefault("remember", False)
    return ChatApp(config, rooms, **kwargs)


async def until(pilot, predicate, timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app process messages until `predicate` holds; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)


def lines(app: ChatApp, key: str) -> list[str]:
    return app.screen.panes[key].chat_log.plain_lines()


def has_line(app: ChatApp, key: str, text: str) -> bool:
    return key in app.screen.panes and any(text in line for line in lines(app, key))


def connected(app: ChatApp, *rooms: str) -> bool:
    links = app.screen.links
    return all(room in links and links[room].connected for room in rooms)


def sidebar(app: ChatApp) -> list[str]:
    return app.screen.query_one(MemberList).names


def tab_label(app: ChatApp, key: str) -> str:
    from textual.widgets import TabbedContent

    pane = app.screen.panes[key]
    return app.screen.query_one(TabbedContent).get_tab(pane.id).label.plain


async def type_line(pilot, text: str) -> None:
    chat_input = pilot.app.screen.query_one(ChatInput)
    chat_input.value = text
    await pilot.press("enter")


async def test_two_clients_exchange_messages_and_see_each_other(relay, room):
    a, b = make_app(relay, [room]), make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa, b.run_test(size=SIZE) as pb:
        await until(pa, lambda: connected(a, room) and connected(b, room), what="connect")
        me_a, me_b = a.identity.name, b.identity.name
        await until(pa, lambda: sidebar(a) == sorted([me_a, me_b], key=str.casefold))
        await until(pb, lambda: sidebar(b) == sorted([me_a, me_b], key=str.casefold))
        await pa.press(*"hello from a", "enter")
        await until(pb, lambda: has_line(b, room, f"{me_a} hello from a"), what="a's message")
        await type_line(pb, "hi a, b here")
        await until(pa, lambda: has_line(a, room, f"{me_b} hi a, b here"), what="b's reply")
        assert sum("hello from a" in line for line in lines(a, room)) == 1
        assert "connected" in str(a.screen.query_one(StatusBar).render())


async def test_join_leave_and_nick_update_the_sidebar(relay, room):
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        other = await JsonClient.connect(relay.url(room))
        name = other.welcome["you"]
        await until(pa, lambda: name in sidebar(a), what="join in sidebar")
        assert has_line(a, room, f"{name} joined")
        await other.send(type="nick", name="renamed-user")
        await until(pa, lambda: "renamed-user" in sidebar(a), what="nick in sidebar")
        assert name not in sidebar(a)
        assert has_line(a, room, f"{name} is now known as renamed-user")
        await other.close()
        await until(pa, lambda: "renamed-user" not in sidebar(a), what="leave")
        assert has_line(a, room, "renamed-user left")
        assert a.screen.query_one(MemberList).border_title == "Members (1)"


async def test_own_nick_changes_name_everywhere(relay, room):
    second = room + "-b"
    a = make_app(relay, [room, second])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room, second))
        assert len({link.identity.name for link in a.screen.links.values()}) == 1
        new = f"nick-{room}"
        await type_line(pa, f"/nick {new}")
        await until(pa, lambda: has_line(a, second, f"is now known as {new}"), what="nick")
        assert a.identity.name == new
        assert f"you are {new}" in str(a.screen.query_one(StatusBar).render())


async def test_unread_counts_and_mention_marks_on_inactive_tabs(relay, room):
    quiet = room + "-quiet"
    a = make_app(relay, [room, quiet])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room, quiet))
        other = await JsonClient.connect(relay.url(quiet))
        await other.send(type="say", text="just chatting")
        await until(pa, lambda: tab_label(a, quiet) == f"#{quiet} 1", what="unread 1")
        await other.send(type="say", text=f"hey {a.identity.name}, look")
        await until(pa, lambda: tab_label(a, quiet) == f"#{quiet} 2 @", what="mention mark")
        assert tab_label(a, room) == f"#{room}"
        assert any("new messages" in line for line in lines(a, quiet))
        await pa.press("alt+a")
        await until(pa, lambda: a.screen.active_pane().key == quiet, what="jump to mention")
        assert tab_label(a, quiet) == f"#{quiet}"
        await pa.press("ctrl+n")
        await until(pa, lambda: a.screen.active_pane().key == room)
        await other.close()


async def test_join_and_part_commands(relay, room):
    extra = room + "-extra"
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        watcher = await JsonClient.connect(relay.url(extra))
        await type_line(pa, f"/join {extra}")
        await until(pa, lambda: connected(a, extra), what="joined extra")
        assert a.screen.active_pane().key == extra
        await watcher.expect("join", name=a.identity.name)
        await type_line(pa, "/part")
        await watcher.expect("leave", name=a.identity.name)
        await until(pa, lambda: extra not in a.screen.panes, what="tab closed")
        assert a.screen.active_pane().key == room
        await type_line(pa, "/join not a room!")
        assert has_line(a, room, "room name may contain only")
        await watcher.close()


async def test_unknown_command_is_a_local_error_never_sent(relay, room):
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        await type_line(pa, "/frobnicate now")
        assert has_line(a, room, "unknown command /frobnicate")
        await type_line(pa, "marker")
        await until(pa, lambda: has_line(a, room, f"{a.identity.name} marker"))
    async with httpx.AsyncClient() as http:
        page = (await http.get(f"{relay.http}/rooms/{room}/messages")).json()
    assert [m["text"] for m in page["messages"]] == ["marker"]


async def test_tab_completes_names_cycling_and_commands(relay, room):
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        first = await JsonClient.connect(relay.url(room))
        second = await JsonClient.connect(relay.url(room))
        await first.send(type="nick", name="zed-one")
        await second.send(type="nick", name="zed-two")
        await until(pa, lambda: {"zed-one", "zed-two"} <= set(sidebar(a)))
        chat_input = a.screen.query_one(ChatInput)
        await pa.press("z", "e", "tab")
        assert chat_input.value == "zed-one: "
        await pa.press("tab")
        assert chat_input.value == "zed-two: "
        await pa.press("tab")
        assert chat_input.value == "zed-one: "
        chat_input.value = ""
        await pa.press(*"hi ze", "tab")
        assert chat_input.value == "hi zed-one "
        chat_input.value = ""
        await pa.press("/", "j", "o", "tab")
        assert chat_input.value == "/join "
        await first.close()
        await second.close()


async def test_input_history_walks_and_survives_restart(relay, room, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    a = make_app(relay, [room], remember=True)
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        for text in ("first line", "second line"):
            await type_line(pa, text)
        await until(pa, lambda: has_line(a, room, "second line"))
    name = a.identity.name
    b = make_app(relay, [room], remember=True)
    async with b.run_test(size=SIZE) as pb:
        chat_input = b.screen.query_one(ChatInput)
        chat_input.value = "draft"
        await pb.press("up")
        assert chat_input.value == "second line"
        await pb.press("up")
        assert chat_input.value == "first line"
        await pb.press("down", "down")
        assert chat_input.value == "draft"
        await until(pb, lambda: connected(b, room))
        assert b.identity.name == name, "the stored token keeps the name across runs"


INJECTIONS = [
    "[@click=app.quit]x[/]",
    "[/",
    "[bold red]not red[/bold red]",
]
# The relay refuses these at the door (tests/test_input.py); the client's own cleaning of them
# is covered in tests/test_tui_units.py.
ESCAPES = ["clear\x1b[2Jscreen", "clip\x1b]52;c;ZXZpbA==\x07board", "csi\x9b31mred"]


async def test_markup_and_escape_injection_shown_literally(relay, room):
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        other = await JsonClient.connect(relay.url(room))
        sender = other.welcome["you"]
        for text in ESCAPES:
            await other.send(type="say", text=text)
            assert (await other.expect("error"))["code"] == "bad_text"
        for text in INJECTIONS:
            await other.send(type="say", text=text)
        await other.send(type="dm", to=a.identity.name, text="[@click=app.quit]dm[/]")
        await until(pa, lambda: has_line(a, "@" + sender, "wants to send"), what="dm request")
        a.screen.links[room].send({"type": "dm_accept", "from": sender})
        await until(pa, lambda: has_line(a, room, "not red[/bold red]"), what="the corpus")
        shown = [line.split(f"{sender} ", 1)[1] for line in lines(a, room) if f"{sender} " in line]
        assert shown[-3:] == INJECTIONS
        await until(pa, lambda: has_line(a, "@" + sender, "[@click=app.quit]dm[/]"), what="dm")
        screen_svg = a.export_screenshot()
        assert "[bold&#160;red]not&#160;red[/bold&#160;red]" in screen_svg
        assert all("\x1b" not in line and "\x9b" not in line for line in lines(a, room))
        await pa.click("ChatLog")
        assert a.is_running
        await other.close()


async def test_direct_messages_open_tabs_on_both_sides(relay, room):
    a, b = make_app(relay, [room]), make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa, b.run_test(size=SIZE) as pb:
        await until(pa, lambda: connected(a, room) and connected(b, room))
        me_a, me_b = a.identity.name, b.identity.name
        await type_line(pa, f"/msg {me_b} psst")
        await until(pa, lambda: has_line(a, "@" + me_b, "held until"), what="held echo")
        await until(pb, lambda: has_line(b, "@" + me_a, "wants to send you"), what="request")
        assert "@" in tab_label(b, "@" + me_a)
        b.screen.action_goto_tab(2)
        await type_line(pb, "/accept")
        await until(pb, lambda: has_line(b, "@" + me_a, f"{me_a} psst"), what="dm at b")
        await until(pa, lambda: has_line(a, "@" + me_b, "accepted"), what="accepted")
        await until(pa, lambda: has_line(a, "@" + me_b, f"{me_a} psst"), what="dm echo at a")
        assert sum("psst" in line for line in lines(a, "@" + me_b)) == 1
        await type_line(pa, "private reply test")
        await until(pb, lambda: has_line(b, "@" + me_a, "private reply test"))
        assert not has_line(b, room, "private reply test")


async def test_selecting_a_member_opens_a_dm_tab(relay, room):
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        other = await JsonClient.connect(relay.url(room))
        name = other.welcome["you"]
        await until(pa, lambda: name in sidebar(a))
        members = a.screen.query_one(MemberList)
        members.highlighted = members.names.index(name)
        members.action_select()
        await until(pa, lambda: "@" + name in a.screen.panes, what="dm tab")
        assert a.screen.active_pane().key == "@" + name
        await other.close()


async def test_multi_line_paste_asks_before_sending(relay, room):
    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        a.screen.query_one(ChatInput).post_message(events.Paste("line one\nline two"))
        await until(pa, lambda: isinstance(a.screen, ConfirmScreen), what="question")
        await pa.press("y")
        await until(pa, lambda: has_line(a, room, "line two"), what="both lines")
        assert has_line(a, room, "line one")


async def page_up_to_the_top(pilot, app, room) -> None:
    """Page Up scrolls until the top; one more asks the relay for the page before it."""
    log = app.screen.panes[room].chat_log
    for _ in range(10):
        if log.at_top:
            break
        await pilot.press("pageup")
    assert log.at_top
    await pilot.press("pageup")


async def test_page_up_at_the_top_fetches_older_history(relay, room):
    async with httpx.AsyncClient() as http:
        for n in range(1, 81):
            url = f"{relay.http}/rooms/{room}/messages"
            assert (await http.post(url, json={"from": "poster", "text": f"old {n}"})).is_success
    a = make_app(relay, [room])
    a.config.backlog = 20
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room) and has_line(a, room, "old 80"))
        assert not has_line(a, room, "old 60 ")
        await page_up_to_the_top(pa, a, room)
        await until(pa, lambda: has_line(a, room, "beginning of history"), what="history")
        via = "poster (via http) "
        texts = [line.split(via, 1)[1] for line in lines(a, room) if via in line]
        assert texts == [f"old {n}" for n in range(1, 81)]
    # A full log keeps only the newest part of a page and asks again from there, not past it.
    full = make_app(relay, [room])
    full.config.backlog, full.config.max_lines = 20, 30
    async with full.run_test(size=SIZE) as pf:
        await until(pf, lambda: connected(full, room) and has_line(full, room, "old 80"))
        await page_up_to_the_top(pf, full, room)
        pane = full.screen.panes[room]
        await until(pf, lambda: pane.state.oldest_seq != 61, what="part of the page")
        via = "poster (via http) "
        shown = [line.split(via, 1)[1] for line in lines(full, room) if via in line]
        assert 1 < pane.state.oldest_seq < 61
        assert shown[0] == f"old {pane.state.oldest_seq}"
        assert not pane.state.history_done


async def test_help_rooms_who_and_clear(relay, room):
    from tui.screens.help import HelpScreen

    a = make_app(relay, [room])
    async with a.run_test(size=SIZE) as pa:
        await until(pa, lambda: connected(a, room))
        await pa.press("f1")
        await until(pa, lambda: isinstance(a.screen, HelpScreen), what="help")
        await pa.press("escape")
        await until(pa, lambda: not isinstance(a.screen, HelpScreen))
        await type_line(pa, "/rooms")
        await until(pa, lambda: has_line(a, room, f"#{room}  1 member(s)"), what="/rooms")
        await type_line(pa, "/who")
        await until(pa, lambda: has_line(a, room, f"members of #{room}: {a.identity.name}"))
        await type_line(pa, "/clear")
        assert lines(a, room) == []


async def test_a_kicked_room_says_not_connected_instead_of_queueing(relay, room):
    owner = await JsonClient.connect(relay.url(room))
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        await owner.send(type="kick", name=app.identity.name)
        await until(pilot, lambda: room not in app.screen.links, what="link dropped")
        assert has_line(app, room, "kicked by the room owner")
        for line in ("/who", "/topic mine now", "still here?"):
            await type_line(pilot, line)
        await until(
            pilot,
            lambda: sum(f"not connected to #{room}" in x for x in lines(app, room)) == 3,
            what="three local refusals",
        )
        assert "offline" in str(app.screen.query_one(StatusBar).render())
    await owner.close()
