"""Tab completion of member names and /commands, cycling through matches on repeated Tab."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class _Cycle:
    start: int
    candidates: list[str]
    index: int
    result: str


class Completer:
    def __init__(self) -> None:
        self._cycle: _Cycle | None = None

    def reset(self) -> None:
        self._cycle = None

    def complete(
        self, value: str, cursor: int, names: Iterable[str], commands: Iterable[str]
    ) -> tuple[str, int] | None:
        """The new (value, cursor) after one Tab press, or None when nothing matches."""
        cycle = self._cycle
        if cycle is not None and value == cycle.result and cursor == len(cycle.result):
            cycle.index = (cycle.index + 1) % len(cycle.candidates)
            return self._apply(value[: cycle.start], cycle)
        head = value[:cursor]
        start = len(head) - len(head.split(" ")[-1])
        word = head[start:]
        if start == 0 and word.startswith("/"):
            pool = [f"/{name} " for name in commands]
        elif word:
            suffix = ": " if start == 0 else " "
            pool = [name + suffix for name in sorted(names, key=str.casefold)]
        else:
            return None
        candidates = [c for c in pool if c.casefold().startswith(word.casefold())]
        if not candidates:
            self._cycle = None
            return None
        self._cycle = _Cycle(start, candidates, 0, "")
        return self._apply(head[:start], self._cycle, value[cursor:])

    def _apply(self, before: str, cycle: _Cycle, after: str = "") -> tuple[str, int]:
        text = before + cycle.candidates[cycle.index]
        cycle.result = text + after
        if after:
            self._cycle = None
        return cycle.result, len(text)
