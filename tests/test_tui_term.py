"""Pilot tests of widgets in a terminal-like setting: selection, copying, scrolling, styles."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from rich.text import Text
from textual.app import App, ComposeResult

from tests.test_tui_app import SIZE, has_line, lines, make_app, until
from tui import cli
from tui.config import profile_error, state_dir
from tui.lines import LineFormatter
from tui.widgets.chat_input import ChatInput
from tui.widgets.chat_log import ChatLog


class LogApp(App[None]):
    def __init__(self, early: int = 0) -> None:
        super().__init__()
        self.early = early

    def compose(self) -> ComposeResult:
        yield ChatLog(100, id="log")

    def on_mount(self) -> None:
        """Lines written before the log's first layout, as a join's backlog is."""
        for i in range(self.early):
            self.query_one(ChatLog).write(Text(f"backlog {i}"))


async def test_double_click_and_ctrl_c_copy_a_word_from_the_log():
    """Double-click selects, Ctrl+C copies: once a TypeError that closed the app."""
    app = LogApp()
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(ChatLog)
        log.write(Text("12:00 alice hello wombat"))
        log.write(Text("12:01 bob goodbye"))
        await pilot.pause()
        await pilot.double_click(ChatLog, offset=(20, 0))
        for segment in log.render_line(0):
            # Selected text stays readable: not painted in the selection's background colour.
            assert segment.style is None or segment.style.color != segment.style.bgcolor
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app.is_running
        assert app.clipboard.splitlines() == ["12:00 alice hello wombat", "12:01 bob goodbye"]
        await pilot.mouse_down(ChatLog, offset=(18, 0))
        await pilot.hover(ChatLog, offset=(24, 0))
        await pilot.mouse_up(ChatLog, offset=(24, 0))
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert app.clipboard == "wombat"


def shows_the_end(log: ChatLog) -> bool:
    return log.max_scroll_y > 0 and log.scroll_y == log.max_scroll_y


async def test_the_log_shows_its_newest_line_after_a_burst_on_mount():
    """A join's backlog arrives before the first layout; the view must end at the newest line."""
    app = LogApp(early=40)
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(ChatLog)
        await pilot.pause()
        assert shows_the_end(log)
        assert log.at_bottom


async def test_the_log_shows_its_newest_line_when_it_first_overflows():
    app = LogApp()
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(ChatLog)
        log.write(Text("first"))
        await pilot.pause()
        for i in range(12):
            log.write(Text(f"pasted {i}"))
        await pilot.pause()
        assert shows_the_end(log)


async def test_a_history_page_keeps_the_newest_line_in_view_of_a_short_log():
    app = LogApp()
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(ChatLog)
        log.write(Text("newest"))
        await pilot.pause()
        log.prepend([Text(f"older {i}") for i in range(30)])
        await pilot.pause()
        assert shows_the_end(log)


def test_only_the_time_of_a_line_is_dim():
    """The stamp's style once covered the whole line, so every message rendered faint."""
    fmt = LineFormatter("%H:%M")
    moment = datetime(2026, 1, 2, 12, 34)
    console = Console(width=80)
    for mention in (False, True):
        line = fmt.message(moment, "bob", "hello alice", own=False, mention=mention)
        assert line.plain == "12:34 bob hello alice"
        assert not line.style
        assert line.get_style_at_offset(console, 0).dim
        assert not line.get_style_at_offset(console, line.plain.index("bob")).dim
        assert not line.get_style_at_offset(console, line.plain.index("hello")).dim
    assert not fmt.system(moment, "bob joined").style


async def test_you_joined_comes_after_the_replayed_messages(relay, room):
    """Replayed messages are older than the join: the line saying so goes after them."""
    async with httpx.AsyncClient() as http:
        for i in range(3):
            url = f"{relay.http}/rooms/{room}/messages"
            response = await http.post(url, json={"from": "bob", "text": f"old {i}"})
            response.raise_for_status()
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: has_line(app, room, "you joined"), what="the join line")
        shown = lines(app, room)
        joined = next(i for i, line in enumerate(shown) if "you joined" in line)
        assert [line for line in shown[:joined] if "old" in line] == [
            line for line in shown if "old" in line
        ]
        assert len([line for line in shown if "old" in line]) == 3


def test_a_profile_name_that_is_not_a_plain_directory_name_is_refused(capsys):
    for bad in ("../escape", ".hidden", "a/b", "", "x" * 65):
        with pytest.raises(SystemExit) as exited:
            cli.main(["--profile", bad, "connect", "room"])
        assert exited.value.code == 2
        assert "--profile" in capsys.readouterr().err


def test_profiles_live_apart_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert state_dir() == tmp_path / "chat-tui"
    assert state_dir("work") == tmp_path / "chat-tui" / "profiles" / "work"
    assert profile_error("work.2") is None


def test_the_readme_bare_websocket_client_works(relay, room):
    """The README's command for a client with nothing installed beyond `make`'s venv."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert ".venv/bin/python -m websockets ws://127.0.0.1:8000/chat/room1" in readme
    url = relay.url(room)
    command = [sys.executable, "-m", "websockets", url]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as client:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(b"hello from a bare client\n")
        client.stdin.flush()
        seen = b""
        deadline = time.monotonic() + 10
        while b":: hello from a bare client" not in seen:
            left = deadline - time.monotonic()
            assert left > 0, seen
            ready, _, _ = select.select([client.stdout], [], [], left)
            if ready:
                seen += os.read(client.stdout.fileno(), 4096)
        client.stdin.close()
        client.wait(10)


HEAVY = ("textual", "httpx", "asyncio", "websockets", "rich")


def modules_after(code: str, stdin: str = "") -> set[str]:
    """The heavy top-level modules a clean interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    command = [sys.executable, "-c", probe]
    done = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=60, check=True
    )
    return set(eval(done.stdout.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_module():
    """Scripts start `chat-tui send` per message; Textual alone costs more than the request."""
    assert modules_after("import tui.cli") == set()


def test_send_rooms_and_plain_load_only_what_they_use(relay, room):
    def run(*args: str) -> str:
        return (
            "from tui import cli\n"
            "try:\n"
            f"    cli.main({['--server', f'ws://127.0.0.1:{relay.port}', *args]!r})\n"
            "except SystemExit as done:\n"
            "    assert done.code == 0, done.code\n"
        )

    assert modules_after(run("send", room, "hello", "--from", "script")) == set()
    assert modules_after(run("rooms")) == set()
    plain = run("--plain", "connect", room)
    assert modules_after(plain, stdin="hi\n") == {"asyncio", "websockets"}


async def test_the_help_screen_lays_its_text_out(relay, room):
    """The help box once showed only its border: the text was laid out at 0x0."""
    from textual.widgets import Static

    from tui.screens.help import HelpScreen

    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        await pilot.pause()
        text = app.screen.query_one(Static)
        assert text.size.width >= 60 and text.size.height >= 20


async def test_typing_while_the_log_has_focus_goes_to_the_input(relay, room):
    """Clicking the log (to copy) focuses it; the next keys typed must not vanish."""
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: has_line(app, room, "you joined"), what="the join line")
        app.screen.panes[room].chat_log.focus()
        await pilot.pause()
        await pilot.press(*"hi there")
        await until(pilot, lambda: app.screen.query_one(ChatInput).value == "hi there")
        await pilot.press("enter")
        await until(pilot, lambda: has_line(app, room, "hi there"), what="the message")
