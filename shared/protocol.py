"""The chat.v1 wire protocol: names, limits and codecs shared by the relay and the clients.

Keeping validation and framing here means the relay and every client agree on what a valid
name is and how a frame splits into events, instead of each side growing its own idea.
"""

from __future__ import annotations

import json
import re
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
CLOSE_RESTART = 1012
CLOSE_SLOW_CONSUMER = 1013
# The same code when a relay on Redis cannot reach it: the reason says so; come back later.
CLOSE_TRY_AGAIN = 1013
CLOSE_KICKED = 4001
CLOSE_ROOM_CLOSED = 4002
CLOSE_REASON_MAX = 123

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
BAD_TEXT = "bad_text"

# What no text field may carry (docs/protocol.md, Text): C0 controls but tab and newline, DEL and
# C1 controls (terminal escapes, carriage returns that overwrite a line); line and paragraph
# separators (line breaks a plain client would not see coming); bidi embeddings, overrides and
# isolates (text that displays in another order than it reads); and surrogate code points, which
# a Python str can hold (JSON's `\ud800` escape, `surrogatepass` decoding) but UTF-8 cannot
# encode.
_REFUSED = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
BAD_PASSWORD = "bad_password"
REGISTERED = "registered"
NOT_REGISTERED = "not_registered"
NOT_MEMBER = "not_member"
UNAVAILABLE = "unavailable"


def _valid_chars(text: str) -> bool:
    return all(ch.isalnum() or ch in _EXTRA_NAME_CHARS for ch in text)


def room_error(room: str) -> str | None:
    """Why `room` is not an acceptable room name, or None when it is."""
    if not 1 <= len(room) <= ROOM_MAX:
        return f"room name must be 1-{ROOM_MAX} characters"
    if not _valid_chars(room):
        return "room name may contain only letters, digits, '-', '_' and '.'"
    if not room.strip("."):
        # `.` and `..` are path segments that browsers and curl resolve away.
        return "room name must not be only dots"
    return None


def text_error(text: str) -> str | None:
    """Why `text` may not travel through the relay in any field, or None when it may.

    Checked once when a request arrives: anything let in here is later encoded for every
    recipient, where one unencodable character would fail for all of them at once.
    """
    if text.isprintable():
        return None
    found = _REFUSED.search(text)
    if found is None:
        return None
    code = ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        why = "which is not valid Unicode"
    elif code in (0x2028, 0x2029):
        why = "a line or paragraph separator (send a newline)"
    elif code > 0x2000:
        why = "a bidirectional embedding, override or isolate"
    else:
        why = "a control character (only tab and newline are allowed)"
    return f"text contains U+{code:04X}, {why}"


def name_error(name: str) -> str | None:
    """Why `name` is not an acceptable user name, or None when it is.

    Stricter than room names: ASCII only and a letter first, so no name can pass for another
    in a different script, nor for a client's own notice lines (`--`, `*`, `!!`).
    """
    if not 1 <= len(name) <= NAME_MAX:
        return f"name must be 1-{NAME_MAX} characters"
    if not (name.isascii() and name[0].isalpha() and _valid_chars(name)):
        return "name must start with an ASCII letter; then letters, digits, '-', '_' and '.'"
    return None


def close_reason(reason: str) -> str:
    """`reason` cut to the 123 UTF-8 bytes a close frame can carry, at a character boundary.

    A reason that names a user (`kicked by …`) can exceed it, and then the close frame is
    never sent: the peer sees 1006 instead of the code that tells it what happened.
    """
    encoded = reason.encode()
    if len(encoded) <= CLOSE_REASON_MAX:
        return reason
    return encoded[:CLOSE_REASON_MAX].decode(errors="ignore")


def sender_label(message: Event) -> str:
    """Who a message is from, as clients show it: a post over HTTP has no identity behind it."""
    sender = str(message.get("from", "?"))
    return f"{sender} (via http)" if message.get("via") == "http" else sender


def now_rfc3339() -> str:
    """Server time as RFC 3339 UTC with milliseconds, the form every `ts` field uses."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode(event: Event) -> str:
    """One event as one line of compact JSON; non-ASCII is kept as is (frames are UTF-8)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def parse(data: str | bytes) -> Any:
    """A peer's JSON; ValueError for anything that is not, including nesting too deep to hold.

    json raises RecursionError for deep nesting (a 64 KB frame holds 60,000 levels), which
    would otherwise escape as a traceback instead of an answer like any other bad JSON.
    """
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def decode_frame(frame: str) -> list[Event]:
    """Split a relay frame into its events: one JSON object per line, blank lines ignored."""
    return [json.loads(line) for line in frame.split("\n") if line.strip()]
