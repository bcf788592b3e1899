"""Pilot tests of widgets in a terminal-like setting: selection, copying, scrolling, styles."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

from tui.widgets.chat_log import ChatLog


class LogApp(App[None]):
    def compose(self) -> ComposeResult:
        yield ChatLog(100, id="log")


async def test_double_click_and_ctrl_c_copy_a_word_from_the_log():
    """Double-click selects, Ctrl+C copies: once a TypeError that closed the app."""
    app = LogApp()
    async with app.run_test(size=(60, 10)) as pilot:
        log = app.query_one(ChatLog)
        log.write(Text("12:00 alice hello wombat"))
        log.write(Text("12:01 bob goodbye"))
        await pilot.pause()
        await pilot.double_click(ChatLog, offset=(20, 0))
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
