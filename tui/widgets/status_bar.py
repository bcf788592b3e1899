"""The connection status line: always visible, so a silent room is never mistaken for a dead one."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from shared.sanitize import one_line


class StatusBar(Static):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.state = "connecting"

    def show(self, state: str, name: str | None, retry_in: float = 0.0, problem: str = "") -> None:
        """`problem` says what failed and where (one line), so a countdown is never unexplained."""
        styles = {"connected": "bold green", "connecting": "yellow", "reconnecting": "bold yellow"}
        line = Text()
        line.append("● ", style=styles.get(state, "bold red"))
        label = f"reconnecting in {retry_in:.0f}s" if state == "reconnecting" else state
        line.append(label, style=styles.get(state, "bold red"))
        if problem:
            line.append(f"  {one_line(problem)}", style="red")
        if name:
            line.append("  you are ", style="dim")
            line.append(one_line(name), style="bold")
        self.state = state
        self.update(line)
