"""One tab: a room or a direct-message conversation, with its log and its unread state."""

from __future__ import annotations

from datetime import date

from rich.text import Text
from textual.app import ComposeResult
from textual.content import Content
from textual.widgets import Label, TabPane

from shared.sanitize import one_line
from tui.client.room import RoomState
from tui.widgets.chat_log import ChatLog

SEEN_NAMES = 5


class RoomPane(TabPane):
    """`key` is the room name, or `@name` for a DM; widget ids are generated, since room names
    (Unicode letters, dots) are not valid Textual ids."""

    def __init__(self, key: str, pane_id: str, max_lines: int) -> None:
        self.state = RoomState(key)
        super().__init__(Content.from_rich_text(self.title_text()), id=pane_id)
        self.last_day: date | None = None
        # "you joined" waits for the replayed messages, which are older, so times run forward.
        self.after_replay: list[Text] = []
        self.replay_left = 0
        self.chat_log = ChatLog(max_lines)
        self.seen_label = Label(classes="seen")

    @property
    def key(self) -> str:
        return self.state.key

    @property
    def is_dm(self) -> bool:
        return self.state.is_dm

    @property
    def peer(self) -> str:
        return self.state.peer

    def compose(self) -> ComposeResult:
        yield self.chat_log
        yield self.seen_label
        yield Label("▼ new messages below (Page Down)", classes="unseen")

    def title_text(self) -> Text:
        """The tab label: name, unread count, and a mark for mentions; never markup."""
        label = Text(one_line(self.key if self.is_dm else f"#{self.key}"))
        if self.state.unread:
            label.append(f" {self.state.unread}", style="bold")
        if self.state.mentioned:
            label.append(" @", style="bold red")
        return label

    def on_chat_log_unseen(self, message: ChatLog.Unseen) -> None:
        self.query_one(".unseen", Label).display = message.count > 0

    def show_seen(self, names: list[str]) -> None:
        """Update the one "seen by" line; the log itself is not touched."""
        label = self.seen_label
        label.display = bool(names)
        if names:
            shown = ", ".join(one_line(name) for name in names[:SEEN_NAMES])
            more = f" +{len(names) - SEEN_NAMES}" if len(names) > SEEN_NAMES else ""
            label.update(Text(f"✓ seen by {shown}{more}", style="dim"))
