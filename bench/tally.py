"""What each receiving client saw: deliveries checked for order, duplicates and isolation.

Every load message's text is `t=<send ns> r=<room> s=<sender id> n=<sender's count>`, so a
receiver can check, per sender, that counts arrive as 1, 2, 3, ... (in order, each once) and
that the room is its own, and compute latency from the embedded send time. Parsing is one
regex over the raw frame, which covers both protocols: a plain frame `name :: t=...` holds one
message, a chat.v1 frame may hold several JSON events (only `message` events carry a load
text; history replays are skipped, though the load generator asks for none with ?backlog=0).
"""

from __future__ import annotations

import array
import re
from collections.abc import Callable

MESSAGE = re.compile(rb"t=(\d+) r=([\w.-]+) s=(\d+) n=(\d+)")
PLAIN_JOIN = b" :: joined the chat"
JSON_JOIN = b'"type":"join"'
REPLAY = b'"replay":true'


def load_text(sent_ns: int, room: str, sender: int, count: int, pad: str) -> str:
    return f"t={sent_ns} r={room} s={sender} n={count}{pad}"


class Shared:
    """Per-process counters every receiver adds to (one process = one core's worth of clients)."""

    def __init__(self) -> None:
        self.windows: list[tuple[int, int, array.array]] = []
        self.measure = (1 << 62, 1 << 62)
        self.delivered_in_window = 0
        self.frames_in_window = 0
        self.last_rx = 0
        self.count_joins = True
        self.joins = 0
        self.last_join_ns = 0


class Receiver:
    """One client's view. `strict`: it was there from the first message, so counts start at 1."""

    __slots__ = ("count", "cross", "errors", "last", "on_own", "room", "strict")

    def __init__(self, room: str, strict: bool) -> None:
        self.room = room.encode()
        self.strict = strict
        self.last: dict[int, int] = {}
        self.count = 0
        self.errors = 0
        self.cross = 0
        self.on_own: Callable[[int], None] | None = None

    def handler(self, shared: Shared, json_mode: bool, own: int) -> Callable[[bytes, int], None]:
        findall = MESSAGE.findall
        last = self.last
        room = self.room
        strict = self.strict
        join_marker = JSON_JOIN if json_mode else PLAIN_JOIN

        def on_text(payload: bytes, now: int) -> None:
            shared.last_rx = now
            lo, hi = shared.measure
            in_window = lo <= now < hi
            if in_window:
                shared.frames_in_window += 1
            if shared.count_joins:
                joins = payload.count(join_marker)
                if joins:
                    shared.joins += joins
                    shared.last_join_ns = now
            if json_mode and REPLAY in payload:
                payload = b"\n".join(x for x in payload.split(b"\n") if REPLAY not in x)
            found = findall(payload)
            if not found:
                return
            self.count += len(found)
            if in_window:
                shared.delivered_in_window += len(found)
            windows = shared.windows
            for sent, their_room, sender_b, n_b in found:
                sender = int(sender_b)
                n = int(n_b)
                previous = last.get(sender)
                if previous is None:
                    previous = 0 if strict else n - 1
                if n != previous + 1:
                    self.errors += 1
                last[sender] = n
                if their_room != room:
                    self.cross += 1
                sent_ns = int(sent)
                for w_lo, w_hi, lat in windows:
                    if w_lo <= sent_ns < w_hi:
                        lat.append(now - sent_ns)
                if sender == own and self.on_own is not None:
                    self.on_own(n)

        return on_text
