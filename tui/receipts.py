"""One room's read markers: what to report as read, what is still unread, who saw your message.

Plain bookkeeping with no widgets or sockets, so the screen only decides *when* to ask it. Seqs
belong to one epoch: the screen calls `reset` when the relay starts a new one.
"""

from __future__ import annotations

READ_INTERVAL = 1.0


class ReadReceipts:
    def __init__(self, interval: float = READ_INTERVAL) -> None:
        self.interval = interval
        self.reset(0)

    def reset(self, marker: int) -> None:
        self.marker = marker
        self.newest = 0
        self.own_last = 0
        self.readers: dict[str, int] = {}
        self.unread: list[tuple[int, bool]] = []
        self._sent = 0
        self._sent_at = float("-inf")

    # -- what arrived ------------------------------------------------------------------------------

    def shown(self, seq: int, own: bool) -> None:
        self.newest = max(self.newest, seq)
        if own:
            self.own_last = max(self.own_last, seq)

    def is_unread(self, seq: int) -> bool:
        return seq > self.marker

    def count_unread(self, seq: int, mention: bool) -> None:
        self.unread.append((seq, mention))

    def read_by_me(self, seq: int) -> None:
        """Another device (or this one) moved the marker: what it covers is no longer unread."""
        self.marker = max(self.marker, seq)
        self.unread = [(s, m) for s, m in self.unread if s > self.marker]

    @property
    def mentioned(self) -> bool:
        return any(mention for _, mention in self.unread)

    # -- reporting our own reading -----------------------------------------------------------------

    def wanted(self) -> int | None:
        """The seq to report, when it grew past what the relay already has from us."""
        return self.newest if self.newest > max(self.marker, self._sent) else None

    def wait(self, now: float) -> float:
        """How long until another report is allowed: at most one per `interval`."""
        return max(0.0, self._sent_at + self.interval - now)

    def sent(self, seq: int, now: float) -> None:
        self._sent = max(self._sent, seq)
        self._sent_at = now

    # -- others reading ----------------------------------------------------------------------------

    def read_by(self, name: str, seq: int) -> None:
        self.readers[name] = max(self.readers.get(name, 0), seq)

    def renamed(self, old: str, new: str) -> None:
        if old in self.readers:
            self.readers[new] = max(self.readers.pop(old), self.readers.get(new, 0))

    def seen_by(self) -> list[str]:
        """Who has read up to your latest message here, by name."""
        if not self.own_last:
            return []
        return sorted(
            (name for name, seq in self.readers.items() if seq >= self.own_last),
            key=str.casefold,
        )
