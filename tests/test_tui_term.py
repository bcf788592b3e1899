"""Pilot tests of widgets in a terminal-like setting: selection, copying, scrolling, styles."""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult

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
