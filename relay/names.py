"""Which names a user may take: the alphabet, reserved words and look-alikes.

A name is how people decide whom they are talking to, so two names that look the same on a
terminal must not both exist. Rather than a full Unicode confusables table (TR39), names use a
small ASCII alphabet (see `shared.protocol.name_error`), which rules out every cross-script
look-alike such as a Cyrillic `\u0430` in `alice`; within ASCII the few glyphs that terminals draw
alike (`0`/`o`, `1`/`l`/`I`, `rn`/`m`, `vv`/`w`, and the separators) fold together in `key`.
Stores index names by `key`, so "already taken" means "looks like a name somebody has".
"""

from __future__ import annotations

from shared import protocol as p

# Words a reader would take for the relay or its operators speaking, and the words clients use
# for themselves in notices; compared by `key`, so `Adm1n` is reserved too.
RESERVED = frozenset(
    {
        "admin",
        "administrator",
        "all",
        "everyone",
        "here",
        "me",
        "mod",
        "moderator",
        "nobody",
        "operator",
        "owner",
        "relay",
        "root",
        "server",
        "staff",
        "support",
        "sysop",
        "system",
        "you",
    }
)

_SINGLE = str.maketrans({"0": "o", "1": "l", "i": "l", "_": "-", ".": "-"})


def key(name: str) -> str:
    """The form two names share when they look alike; names are unique by it."""
    folded = name.casefold().translate(_SINGLE)
    return folded.replace("rn", "m").replace("vv", "w")


_RESERVED_KEYS = frozenset(key(word) for word in RESERVED)


def name_problem(name: str) -> str | None:
    """Why a user may not call itself `name` (alphabet, length, reserved), or None."""
    problem = p.name_error(name)
    if problem is not None:
        return problem
    if key(name) in _RESERVED_KEYS:
        return f"{name} is reserved"
    return None
