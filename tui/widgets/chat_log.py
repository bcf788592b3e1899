"""A bounded, append-friendly message log that re-wraps on resize.

RichLog renders each write once at the width of the moment and trims by copying its whole line
list; this log keeps the `Text` of each entry (so a resize re-wraps everything once) and trims
from the front with an offset that is compacted only when half the list is dead, so appending
costs the same whether the log holds a hundred entries or its full `max_lines`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from rich.style import Style
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.selection import Selection
from textual.strip import Strip

COMPACT_AFTER = 1024


@dataclass
class _Entry:
    text: Text
    tag: str | None
    height: int = 0


class ChatLog(ScrollView, can_focus=True):
    DEFAULT_CSS = """
    ChatLog {
        scrollbar-gutter: stable;
        overflow-x: hidden;
    }
    """

    class Unseen(Message):
        """The number of entries added below the visible part changed."""

        def __init__(self, log: ChatLog, count: int) -> None:
            super().__init__()
            self.chat_log = log
            self.count = count

    def __init__(self, max_lines: int = 5000, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self._entries: deque[_Entry] = deque()
        self._strips: list[Strip] = []
        self._offset = 0
        self._width = 0
        self._following = True
        self._end_pending = False
        self.unseen = 0

    # -- content --------------------------------------------------------------------------------

    @property
    def entry_count(self) -> int:
        return len(self._entries)

    def plain_lines(self) -> list[str]:
        """The entries as plain text, for tests and for copying."""
        return [entry.text.plain for entry in self._entries]

    def has_tag(self, tag: str) -> bool:
        return any(entry.tag == tag for entry in self._entries)

    def write(self, text: Text, tag: str | None = None) -> None:
        entry = _Entry(text, tag)
        self._entries.append(entry)
        if self._width:
            strips = self._render_entry(text)
            entry.height = len(strips)
            self._strips.extend(strips)
        removed = 0
        while len(self._entries) > self.max_lines:
            removed += self._entries.popleft().height
        self._offset += removed
        if self._offset > COMPACT_AFTER and self._offset * 2 > len(self._strips):
            del self._strips[: self._offset]
            self._offset = 0
        self._update_size()
        if self._following:
            self._follow()
        else:
            if removed:
                self.scroll_to(y=max(0, self.scroll_y - removed), animate=False, immediate=True)
            self._set_unseen(self.unseen + 1)

    def prepend(self, texts: list[Text]) -> int:
        """Older history arrived: put it on top and keep the view where it was.

        A full log keeps only the newest of `texts`; the count added tells the caller how far
        back the log really reaches.
        """
        room = max(0, self.max_lines - len(self._entries))
        added = [_Entry(text, None) for text in texts[-room:]] if room and texts else []
        if not added:
            return 0
        self._entries.extendleft(reversed(added))
        before = len(self._strips) - self._offset
        self._rebuild()
        self.scroll_to(
            y=self.scroll_y + (len(self._strips) - before),
            animate=False,
            immediate=True,
            force=True,
        )
        return len(added)

    def remove_tag(self, tag: str) -> None:
        if self.has_tag(tag):
            self._entries = deque(entry for entry in self._entries if entry.tag != tag)
            self._rebuild()

    def clear(self) -> None:
        self._entries.clear()
        self._strips = []
        self._offset = 0
        self._update_size()
        self._set_unseen(0)
        self.refresh()

    # -- rendering ------------------------------------------------------------------------------

    def _render_entry(self, text: Text) -> list[Strip]:
        """Not `_render`: that name is Textual's, called to copy a selection."""
        console = self.app.console
        options = console.options.update_width(self._width)
        lines = console.render_lines(text, options, pad=True)
        return [Strip(line, self._width) for line in lines]

    def _rebuild(self) -> None:
        self._strips = []
        self._offset = 0
        if self._width:
            for entry in self._entries:
                strips = self._render_entry(entry.text)
                entry.height = len(strips)
                self._strips.extend(strips)
        self._update_size()
        self.refresh()

    def _update_size(self) -> None:
        self.virtual_size = Size(self._width, len(self._strips) - self._offset)

    def on_resize(self, event: events.Resize) -> None:
        width = self.scrollable_content_region.width
        if width != self._width and width > 0:
            self._width = width
            self._rebuild()
        if self._following:
            self._follow()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.scrollable_content_region.width
        index = self._offset + scroll_y + y
        if index >= len(self._strips):
            return Strip.blank(width, self.rich_style)
        strip = self._strips[index]
        selection = self.text_selection
        if selection is not None and (span := selection.get_span(scroll_y + y)) is not None:
            start, end = span
            end = strip.cell_length if end < 0 else end
            style = self._selection_style()
            chosen = strip.crop(start, end).apply_style(style)
            strip = Strip.join([strip.crop(0, start), chosen, strip.crop(end)])
        strip = strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)
        # Offsets tell the screen which character the mouse is on, for selecting text.
        return strip.apply_offsets(scroll_x, scroll_y + y)

    # -- selecting and copying ------------------------------------------------------------------

    def get_selection(self, selection: Selection) -> tuple[str, str] | None:
        """The selected text, as wrapped on screen (so selection offsets match)."""
        text = "\n".join(strip.text.rstrip() for strip in self._strips[self._offset :])
        return selection.extract(text), "\n"

    def _selection_style(self) -> Style:
        """The theme's selection colours over this log's background. Most themes give the
        selection a "transparent" foreground, meaning the text keeps its colour; as a Rich
        style it would paint the text in the background colour and hide it."""
        styles = self.screen.get_component_styles("screen--selection")
        background = self.background_colors[1] + styles.background
        foreground = styles.color
        color = (background + foreground).rich_color if foreground.a > 0 else None
        return Style(bgcolor=background.rich_color, color=color)

    def selection_updated(self, selection: Selection | None) -> None:
        self.refresh()

    # -- following the bottom -------------------------------------------------------------------

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        self._following = new_value >= self.max_scroll_y
        if self._following:
            self._set_unseen(0)

    def _follow(self) -> None:
        """Scroll to the end once per refresh, however many entries arrived meanwhile."""
        if not self._end_pending:
            self._end_pending = True
            self.call_after_refresh(self._to_end)

    def _to_end(self) -> None:
        self._end_pending = False
        if self._following:
            self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)

    @property
    def at_bottom(self) -> bool:
        """Following the end: the newest entry is the one in view."""
        return self._following

    @property
    def at_top(self) -> bool:
        return self.scroll_y <= 0

    def _set_unseen(self, count: int) -> None:
        if count != self.unseen:
            self.unseen = count
            self.post_message(self.Unseen(self, count))
