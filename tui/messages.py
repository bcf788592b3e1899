"""Messages the network workers post to the UI."""

from __future__ import annotations

from textual.message import Message

from shared.protocol import Event
from tui.connection import Status


class RoomEvent(Message):
    def __init__(self, room: str, event: Event) -> None:
        super().__init__()
        self.room = room
        self.event = event


class LinkChanged(Message):
    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status
