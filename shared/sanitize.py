"""Make untrusted text safe to show in a terminal.

Names, rooms and message text come from other people. Printed raw they could clear the screen,
set the clipboard (OSC 52) or fake other users' lines, so every client shows them only after
`clean()`. Rich/Textual markup is a separate concern: the TUI also renders the result as plain
`Text`, never as markup.
"""

from __future__ import annotations

import re

# ESC-introduced sequences: CSI (ESC [ ... final byte), OSC/DCS/SOS/PM/APC strings ended by BEL
# or ST (or left unterminated), and two-byte escapes. C1 controls (U+0080-U+009F) include the
# single-character CSI (U+009B) and OSC (U+009D), handled the same way.
_SEQUENCE = re.compile(
    r"""
    (?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?            # CSI
    | (?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])     # OSC, DCS, SOS, PM, APC ...
      [^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?       # ... up to BEL or ST
    | \x1b[ -/]*[0-~]?                            # other escapes
    """,
    re.VERBOSE,
)
# Remaining C0 controls (tab and newline are kept), DEL and C1 controls, and the bidi
# embeddings, overrides and isolates that make text display in another order than it reads.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """Drop terminal control sequences, control and bidi characters; keep tabs and newlines."""
    if text.isprintable():
        return text
    return _CONTROL.sub("", _SEQUENCE.sub("", text))


def one_line(text: str) -> str:
    """`clean()`, with line breaks shown as a visible mark so one message stays one line."""
    return clean(text).replace("\n", " ⏎ ")
