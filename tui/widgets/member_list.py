"""The member sidebar of the active room: sorted names, you marked, count in the title."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from shared.sanitize import one_line
from tui.lines import name_color


class MemberList(OptionList):
    class Picked(Message):
        """A member was chosen: open a direct-message tab with them."""

        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.names: list[str] = []
        self._me: str | None = None
        self.border_title = "Members"

    def show(self, names: list[str], me: str | None, dark: bool, title: str = "Members") -> None:
        ordered = sorted(set(names), key=str.casefold)
        self.border_title = f"{title} ({len(ordered)})"
        if ordered == self.names and me == self._me:
            return
        self.names = ordered
        self._me = me
        self.clear_options()
        options = []
        for name in ordered:
            label = Text("▶ " if name == me else "  ", style="bold")
            label.append(one_line(name), style=name_color(name, dark))
            options.append(Option(label, id=name))
        self.add_options(options)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Picked(event.option.id))
