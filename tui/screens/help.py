"""F1 / `/help`: every key and command on one screen."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.client.commands import help_lines

KEYS = [
    ("Enter", "send the line"),
    ("Up / Down", "walk your input history"),
    ("Tab", "complete a member name or /command (press again to cycle)"),
    ("Ctrl+N / Ctrl+P", "next / previous tab"),
    ("Alt+1..9", "go to tab 1..9"),
    ("Ctrl+G / Alt+A", "next tab with an unread mention"),
    ("Ctrl+T / F2", "show or hide the member list (hidden below 70 columns)"),
    ("Page Up / Down", "scroll the log (Page Up at the top loads older history)"),
    ("F1", "this help"),
    ("Ctrl+Q", "quit"),
]


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]  # noqa: RUF012

    def compose(self) -> ComposeResult:
        text = Text()
        text.append("Keys\n", style="bold")
        for key, what in KEYS:
            text.append(f"  {key:<18}{what}\n")
        text.append("\nCommands\n", style="bold")
        for line in help_lines():
            text.append(f"  {line}\n")
        text.append("\n  //text sends a message that starts with '/'.  Esc closes.", style="dim")
        with VerticalScroll(id="help"):
            yield Static(text, id="help-text")
