"""Log lines as Rich `Text` built from plain strings: network text is never parsed as markup.

Every string that came from the relay passes through `shared.sanitize` here, before it is put
into a `Text`, so neither terminal escapes nor `[markup]` in a message can take effect.
"""

from __future__ import annotations

import zlib
from datetime import date, datetime

from rich.text import Text

from shared.sanitize import clean, one_line

# Distinct hues readable on dark and on light backgrounds respectively.
DARK_PALETTE = (
    "#e06c75", "#98c379", "#e5c07b", "#61afef", "#c678dd",
    "#56b6c2", "#d19a66", "#ff8fb1", "#a3be8c", "#88c0d0",
)  # fmt: skip
LIGHT_PALETTE = (
    "#b3261e", "#2e7d32", "#8d6e00", "#1565c0", "#7b1fa2",
    "#00838f", "#bf5b00", "#ad1457", "#558b2f", "#0277bd",
)  # fmt: skip


def name_color(name: str, dark: bool) -> str:
    """A stable colour per name: crc32, unlike hash(), is the same in every process."""
    palette = DARK_PALETTE if dark else LIGHT_PALETTE
    return palette[zlib.crc32(name.casefold().encode()) % len(palette)]


class LineFormatter:
    def __init__(self, timestamp_format: str = "%H:%M", dark: bool = True) -> None:
        self.timestamp_format = timestamp_format
        self.dark = dark

    def _stamp(self, moment: datetime) -> Text:
        """A line that starts with the time; only the time is dim, not what is appended."""
        line = Text()
        line.append(moment.strftime(self.timestamp_format) + " ", style="dim")
        return line

    def message(
        self, moment: datetime, sender: str, text: str, *, own: bool, mention: bool
    ) -> Text:
        name = one_line(sender)
        line = self._stamp(moment)
        if own:
            line.append(f"{name}", style=f"bold reverse {name_color(name, self.dark)}")
        else:
            line.append(name, style=f"bold {name_color(name, self.dark)}")
        line.append(" ")
        line.append(clean(text).replace("\t", "    "), style="bold" if mention else "")
        if mention:
            line.stylize("on #4a3b00" if self.dark else "on #fff3c4")
        return line

    def system(self, moment: datetime, text: str) -> Text:
        line = self._stamp(moment)
        line.append("-- " + one_line(text), style="dim italic")
        return line

    def announce(self, moment: datetime, text: str) -> Text:
        """The relay operator's notice: unlike any user's line, so it cannot be faked by one."""
        line = self._stamp(moment)
        line.append(" announcement ", style="bold reverse yellow")
        line.append(" " + clean(text).replace("\t", "    "), style="bold yellow")
        return line

    def error(self, text: str) -> Text:
        return Text("!! " + one_line(text), style="bold red")

    def info(self, text: str) -> Text:
        return Text(clean(text), style="dim")

    def day(self, day: date) -> Text:
        label = day.strftime("%A %d %B %Y")
        return Text(f"─── {label} ───", style="dim", justify="center")

    def unread_marker(self) -> Text:
        return Text("─── new messages ───", style="bold red", justify="center")

    def gap(self) -> Text:
        notice = "─── some messages could not be recovered here ───"
        return Text(notice, style="bold yellow", justify="center")
