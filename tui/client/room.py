"""One room's (or DM conversation's) state as the client knows it, and what each event changes.

`RoomState.apply(event, me)` updates members, read markers, unread counts, history paging and
the epoch, and returns `Effects`: what a front end has to redraw. It decides nothing about
layout, so the screen only renders, and tests check the decisions without Textual.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shared.protocol import Event, sender_label
from tui.receipts import ReadReceipts


def mentions(text: str, name: str | None) -> bool:
    if not name:
        return False
    pattern = rf"(?<![\w.-]){re.escape(name)}(?![\w-])"
    return re.search(pattern, text, re.IGNORECASE) is not None


@dataclass(frozen=True)
class Effects:
    """What an event changed, for the front end to show.

    `show`: the event gets a line; `gap`: a resume lost messages; `joined`: a first join (not a
    resume); `members`, `unread`, `seen`: the member list, the tab's unread label or the "seen
    by" line changed. For a message: `own`, `mention`, `live` (not replayed), and `count` (it is
    unread, if its tab is not the one being looked at).
    """

    show: bool = True
    gap: bool = False
    joined: bool = False
    members: bool = False
    unread: bool = False
    seen: bool = False
    own: bool = False
    mention: bool = False
    live: bool = False
    count: bool = False


class RoomState:
    def __init__(self, key: str) -> None:
        """`key` is the room name, or `@name` for a DM."""
        self.key = key
        self.is_dm = key.startswith("@")
        self.members: set[str] = set()
        self.epoch: str | None = None
        self.oldest_seq: int | None = None
        self.history_done = False
        self.unread = 0
        self.mentioned = False
        self.receipts = ReadReceipts()

    @property
    def peer(self) -> str:
        return self.key[1:]

    def apply(self, event: Event, me: str | None) -> Effects:
        kind = event.get("type")
        if kind == "welcome":
            return self._welcome(event)
        if kind == "message":
            return self._message(event, me)
        if kind == "join":
            name = str(event.get("name", "?"))
            if name in self.members and name == me:
                return Effects(show=False)
            self.members.add(name)
            return Effects(members=True)
        if kind == "leave":
            self.members.discard(str(event.get("name", "?")))
            return Effects(members=True)
        if kind == "nick":
            old, new = str(event.get("old", "?")), str(event.get("new", "?"))
            if old in self.members:
                self.members.discard(old)
                self.members.add(new)
            self.receipts.renamed(old, new)
            return Effects(members=True, seen=True)
        if kind == "members":
            members = event.get("members")
            self.members = (
                {m for m in members if isinstance(m, str)} if isinstance(members, list) else set()
            )
            return Effects(members=True)
        if kind == "read":
            return self._read(event, me)
        return Effects()

    def _welcome(self, event: Event) -> Effects:
        self.members = _names(event.get("members"))
        marker = event.get("read")
        marker = marker if isinstance(marker, int) else 0
        epoch = event.get("epoch")
        seen = False
        if epoch != self.epoch:
            # Seqs of a new epoch say nothing about the old one, so read state starts over.
            self.epoch = epoch if isinstance(epoch, str) else None
            self.receipts.reset(marker)
            seen = True
        else:
            self.receipts.read_by_me(marker)
        gap = event.get("recovered") is False
        if gap:
            self.oldest_seq = None
            self.history_done = False
        return Effects(
            gap=gap,
            joined="recovered" not in event,
            members=True,
            unread=self._sync_unread(),
            seen=seen,
        )

    def _message(self, event: Event, me: str | None) -> Effects:
        # A post over HTTP under our name is not ours: its label says "(via http)".
        sender, text = sender_label(event), str(event.get("text", ""))
        own = sender == me
        seq = event.get("seq")
        seq = seq if isinstance(seq, int) else None
        if seq is not None and (self.oldest_seq is None or seq < self.oldest_seq):
            self.oldest_seq = seq
        live = not event.get("replay")
        if seq is not None:
            self.receipts.shown(seq, own)
        unread = live or (seq is not None and self.receipts.is_unread(seq))
        return Effects(
            own=own,
            mention=not own and mentions(text, me),
            live=live,
            count=not own and unread,
            seen=own,
        )

    def _read(self, event: Event, me: str | None) -> Effects:
        name, seq = event.get("name"), event.get("seq")
        if self.is_dm or not isinstance(name, str) or not isinstance(seq, int):
            return Effects(show=False)
        if name == me:
            self.receipts.read_by_me(seq)
            return Effects(show=False, unread=self._sync_unread())
        self.receipts.read_by(name, seq)
        return Effects(show=False, seen=True)

    def _sync_unread(self) -> bool:
        """The unread count is what lies past the marker; another device may have moved it."""
        unread, mentioned = len(self.receipts.unread), self.receipts.mentioned
        if (unread, mentioned) == (self.unread, self.mentioned):
            return False
        self.unread, self.mentioned = unread, mentioned
        return True

    # -- what the front end reports -------------------------------------------------------------

    def count_unread(self, mention: bool, seq: int | None) -> bool:
        """One more unread message in a tab not looked at; True when it is the first."""
        first = self.unread == 0
        self.unread += 1
        self.mentioned = self.mentioned or mention
        if seq is not None:
            self.receipts.count_unread(seq, mention)
        return first

    def looked_at(self) -> None:
        """The tab became the active one: everything in it counts as seen."""
        self.unread = 0
        self.mentioned = False
        self.receipts.unread.clear()

    # -- history paging -------------------------------------------------------------------------

    def older(self, event: Event) -> list[Event]:
        """The messages of a `history` page older than anything shown, oldest first."""
        messages = event.get("messages")
        return [
            message
            for message in (messages if isinstance(messages, list) else [])
            if isinstance(message, dict)
            and isinstance(message.get("seq"), int)
            and (self.oldest_seq is None or message["seq"] < self.oldest_seq)
        ]

    def paged(self, older: list[Event], added: int) -> bool:
        """`added` of `older` made it into the log; True when the beginning was reached.

        A full log keeps only the newest part of a page: the next page starts from there.
        """
        if added:
            self.oldest_seq = min(m["seq"] for m in older[len(older) - added :])
        if not older or (added == len(older) and self.oldest_seq == 1):
            self.history_done = True
            return True
        return False

    def history_request(self, page: int) -> Event | None:
        """The request for the page before the oldest message shown; None when there is none."""
        if self.history_done or self.oldest_seq is None:
            return None
        return {"type": "history", "before": self.oldest_seq, "limit": page}


def _names(members: object) -> set[str]:
    return {m for m in members if isinstance(m, str)} if isinstance(members, list) else set()
