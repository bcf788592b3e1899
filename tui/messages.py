"""Messages the network workers post to the UI."""

from __future__ import annotations

from textual.message import Message

from shared.protocol import Event
from tui.client.link import Status


class RoomEvent(Message):
    """An event from a room's link; `request` is the request it answers, when known."""

    def __init__(self, room: str, event: Event, request: Event | None = None) -> None:
        super().__init__()
        self.room = room
        self.event = event
        self.request = request


class LinkChanged(Message):
    def __init__(self, status: Status) -> None:
        super().__init__()
        self.status = status
