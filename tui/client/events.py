"""What a relay event says, in words: one wording for every front end.

`--plain` prints these lines after `* `; the full-screen app shows them as system lines. Every
value from the relay passes through `one_line`, so no front end can print a terminal escape.
"""

from __future__ import annotations

from shared.protocol import Event
from shared.sanitize import one_line


def _get(event: Event, field: str, default: str = "?") -> str:
    return one_line(str(event.get(field, default)))


def describe(event: Event, request: Event | None = None) -> str | None:
    """The system line for an event; None for messages, DMs and events nobody needs to read.

    `request` is the request an error answers, when the link could tell: the error then says
    which command failed.
    """
    kind = event.get("type")
    if kind == "welcome":
        return f"joined #{_get(event, 'room')} as {_get(event, 'you')}"
    if kind in ("join", "leave"):
        return f"{_get(event, 'name')} {'joined' if kind == 'join' else 'left'}"
    if kind == "nick":
        return f"{_get(event, 'old')} is now known as {_get(event, 'new')}"
    if kind == "members":
        members = event.get("members")
        names = members if isinstance(members, list) else []
        return f"members of #{_get(event, 'room')}: {', '.join(one_line(str(m)) for m in names)}"
    if kind == "error":
        return f"{_get(event, 'code', 'error')}: {_get(event, 'detail', '')}{_refused(request)}"
    if kind == "dm_request":
        sender = _get(event, "from")
        return f"{sender} wants to send you private messages: /accept {sender} or /decline {sender}"
    if kind in ("dm_accepted", "dm_declined"):
        verb = "accepted" if kind == "dm_accepted" else "declined"
        return f"{_get(event, 'by')} {verb} your private messages"
    if kind == "topic":
        return f"{_get(event, 'by')} set the topic: {_get(event, 'topic', '')}"
    if kind == "kick":
        return f"{_get(event, 'by')} kicked {_get(event, 'name')}"
    if kind == "closed":
        return f"{_get(event, 'by')} closed the room"
    if kind == "private":
        made = "invite-only" if event.get("private") is True else "open"
        return f"{_get(event, 'by')} made the room {made}"
    if kind in ("invited", "removed"):
        return f"{_get(event, 'by')} {kind} {_get(event, 'name')} (#{_get(event, 'room')})"
    if kind == "owner":
        return f"{_get(event, 'by')} handed the room over to {_get(event, 'owner')}"
    if kind == "announce":
        return f"announcement: {_get(event, 'text', '')}"
    if kind == "read":
        return f"{_get(event, 'name')} read up to seq {_get(event, 'seq')}"
    return None


def _refused(request: Event | None) -> str:
    if request is None:
        return ""
    kind = request.get("type")
    if kind == "say":
        return f" (not sent: {one_line(str(request.get('text', '')))})"
    if kind == "dm":
        to, text = one_line(str(request.get("to", ""))), one_line(str(request.get("text", "")))
        return f" (not sent to {to}: {text})"
    if kind in ("dm_accept", "dm_decline"):
        command = str(kind).removeprefix("dm_")
        return f" (/{command} {one_line(str(request.get('from', '')))})"
    return f" (/{one_line(str(kind))})"
