"""The input line: Enter sends, Up/Down walk the history, Tab completes names and commands."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input

from tui.completion import Completer
from tui.state import InputHistory


class ChatInput(Input):
    BINDINGS = [  # noqa: RUF012 (Textual's convention for bindings)
        Binding("up", "history_previous", "History", show=False),
        Binding("down", "history_next", "History", show=False),
        Binding("tab", "complete", "Complete", show=False, priority=True),
    ]

    class PastedLines(Message):
        """A paste of several lines: the screen asks before sending each as a message."""

        def __init__(self, lines: list[str]) -> None:
            super().__init__()
            self.lines = lines

    def __init__(
        self,
        history: InputHistory,
        names: Callable[[], Iterable[str]],
        commands: Iterable[str],
        *,
        id: str | None = None,
    ) -> None:
        # Focus coming back (a click, a key typed in the log) must not select the draft, or
        # the next key typed would replace it.
        super().__init__(placeholder="Message, or /help", id=id, select_on_focus=False)
        self.history = history
        self._names = names
        self._commands = list(commands)
        self._completer = Completer()

    def action_history_previous(self) -> None:
        line = self.history.previous(self.value)
        if line is not None:
            self._show(line)

    def action_history_next(self) -> None:
        line = self.history.next()
        if line is not None:
            self._show(line)

    def _show(self, line: str) -> None:
        self.value = line
        self.cursor_position = len(line)

    def action_complete(self) -> None:
        result = self._completer.complete(
            self.value, self.cursor_position, self._names(), self._commands
        )
        if result is not None:
            self.value, self.cursor_position = result

    def _on_paste(self, event: events.Paste) -> None:
        lines = [line for line in event.text.splitlines() if line.strip()]
        if len(lines) > 1:
            event.prevent_default()
            event.stop()
            self.post_message(self.PastedLines(lines))
