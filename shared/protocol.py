"""The chat.v1 wire protocol: names, limits and codecs shared by the relay and the clients.

Keeping validation and framing here means the relay and every client agree on what a valid
name is and how a frame splits into events, instead of each side growing its own idea.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

SUBPROTOCOL = "chat.v1"

ROOM_MAX = 64
NAME_MAX = 32
HISTORY_PAGE_MAX = 200
_EXTRA_NAME_CHARS = frozenset("-_.")

Event = dict[str, Any]

# Close codes the relay uses; docs/protocol.md lists them for client authors.
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SLOW_CONSUMER = 1013
CLOSE_KICKED = 4001
CLOSE_ROOM_CLOSED = 4002

# Error codes carried in `error` events (stable words; clients may switch on them).
BAD_JSON = "bad_json"
BAD_FRAME = "bad_frame"
UNKNOWN_TYPE = "unknown_type"
TOO_LARGE = "too_large"
EMPTY = "empty"
RATE_LIMITED = "rate_limited"
BAD_NAME = "bad_name"
BAD_ROOM = "bad_room"
NAME_TAKEN = "name_taken"
NO_SUCH_USER = "no_such_user"
BAD_REQUEST = "bad_request"
NOT_OWNER = "not_owner"
DM_DECLINED = "dm_declined"


def _valid_chars(text: str) -> bool:
    return all(ch.isalnum() or ch in _EXTRA_NAME_CHARS for ch in text)


def room_error(room: str) -> str | None:
    """Why `room` is not an acceptable room name, or None when it is."""
    if not 1 <= len(room) <= ROOM_MAX:
        return f"room name must be 1-{ROOM_MAX} characters"
    if not _valid_chars(room):
        return "room name may contain only letters, digits, '-', '_' and '.'"
    return None


def name_error(name: str) -> str | None:
    """Why `name` is not an acceptable user name, or None when it is."""
    if not 1 <= len(name) <= NAME_MAX:
        return f"name must be 1-{NAME_MAX} characters"
    if not _valid_chars(name):
        return "name may contain only letters, digits, '-', '_' and '.'"
    return None


def now_rfc3339() -> str:
    """Server time as RFC 3339 UTC with milliseconds, the form every `ts` field uses."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(event: Event) -> str:
    """One event as one line of compact JSON; non-ASCII is kept as is (frames are UTF-8)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def decode_frame(frame: str) -> list[Event]:
    """Split a relay frame into its events: one JSON object per line, blank lines ignored."""
    return [json.loads(line) for line in frame.split("\n") if line.strip()]
