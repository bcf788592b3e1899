"""A client's frames read before the hub acts on them: field checks, plain commands.

Plain Python, no state: what a frame asks for, or why it cannot be taken, decided once per
inbound frame (never per recipient).
"""

from __future__ import annotations

from typing import TypeGuard

from shared import protocol as p
from shared.protocol import Event

PLAIN_HELP = (
    "* commands: /nick NAME, /msg NAME TEXT, /accept NAME, /decline NAME, /who, /topic TEXT,"
    " /kick NAME, /close, /help; //text posts /text"
)


def plain_command(line: str) -> tuple[str, Event | None]:
    """A plain client's `/name args` line: the command's name and the request it stands for.

    None when the name is none of the commands that map to a request (`/help` included).
    """
    name, _, arg = line[1:].partition(" ")
    arg = arg.strip()
    head, _, rest = arg.partition(" ")
    requests: dict[str, Event] = {
        "nick": {"type": "nick", "name": arg},
        "msg": {"type": "dm", "to": head, "text": rest.strip()},
        "accept": {"type": "dm_accept", "from": arg},
        "decline": {"type": "dm_decline", "from": arg},
        "who": {"type": "who"},
        "topic": {"type": "topic", "text": arg},
        "kick": {"type": "kick", "name": arg},
        "close": {"type": "close"},
    }
    return name, requests.get(name.lower())


def strip_line_break(text: str) -> str:
    """A plain frame without the line break that line-oriented clients (websocat) end it with."""
    if text.endswith("\n"):
        return text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def fields_problem(request: Event) -> str | None:
    """Why a string field other than `text` cannot be taken, or None.

    Any field may be echoed back (a cid, a name in an error's detail), so all are checked
    here, once per request. `text` is left to `text_problem`, which every handler that
    uses it runs anyway.
    """
    for field, value in request.items():
        if field != "text" and isinstance(value, str):
            problem = p.text_error(value)
            if problem is not None:
                return f"{field!r}: {problem}"[:200]
    return None


def is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
