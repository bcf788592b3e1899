"""Local time for the log, injectable so tests and snapshots do not depend on the wall clock."""

from __future__ import annotations

from datetime import datetime


def parse_ts(ts: object) -> datetime | None:
    """A relay `ts` (RFC 3339 UTC) as an aware datetime; None for anything malformed."""
    if not isinstance(ts, str):
        return None
    try:
        moment = datetime.fromisoformat(ts)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


class Clock:
    def now(self) -> datetime:
        return datetime.now().astimezone()

    def local(self, ts: object) -> datetime:
        """The event's time in the local zone; now, if the relay sent no usable time."""
        moment = parse_ts(ts)
        return moment.astimezone() if moment is not None else self.now()


class FixedClock(Clock):
    """Every event happens at one moment: deterministic screens for snapshot tests."""

    def __init__(self, moment: datetime) -> None:
        self.moment = moment

    def now(self) -> datetime:
        return self.moment

    def local(self, ts: object) -> datetime:
        return self.moment
