"""Cost of appending a message line to a room's log, as the log grows (issue 3).

Runs the real ChatLog in a headless Textual app at 100x30 and times `LineFormatter.message` +
`ChatLog.write` per append. Reported: the median cost of the last 1,000 appends once the log has
seen N messages, for the default bound (5,000 entries) and for an unbounded log that keeps all N,
plus RichLog (Textual's stock log) with the same bound for comparison.

    .venv/bin/python -m bench.log_append
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import datetime

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets import RichLog

from tui.lines import LineFormatter
from tui.widgets.chat_log import ChatLog

SIZES = (1_000, 10_000, 50_000)
TAIL = 1_000
BOUND = 5_000
NAMES = [f"user-{n}" for n in range(12)]


class LogApp(App[None]):
    def __init__(self, widget: ChatLog | RichLog) -> None:
        super().__init__()
        self.widget = widget

    def compose(self) -> ComposeResult:
        yield self.widget


def line(formatter: LineFormatter, moment: datetime, n: int) -> Text:
    text = f"message {n}: " + "lorem ipsum dolor sit amet " * (1 + n % 4)
    return formatter.message(moment, NAMES[n % len(NAMES)], text, own=n % 7 == 0, mention=False)


async def measure(make: type[ChatLog] | type[RichLog], total: int, bound: int) -> float:
    """Median microseconds per append over the last TAIL appends of `total` (median: the
    machine is shared, and a few preempted samples should not decide the figure)."""
    widget = make(max_lines=bound)
    app = LogApp(widget)
    formatter = LineFormatter()
    moment = datetime.now().astimezone()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        samples: list[float] = []
        for n in range(total):
            start = time.perf_counter()
            widget.write(line(formatter, moment, n))
            if n >= total - TAIL:
                samples.append(time.perf_counter() - start)
            if n % 500 == 0:
                await pilot.pause()
    return statistics.median(samples) * 1e6


async def main() -> None:
    print(
        f"{'messages':>9} {'ChatLog bounded':>16} {'ChatLog unbounded':>18} {'RichLog bounded':>16}"
    )
    for total in SIZES:
        bounded = await measure(ChatLog, total, BOUND)
        unbounded = await measure(ChatLog, total, total)
        richlog = await measure(RichLog, total, BOUND)
        print(f"{total:>9,} {bounded:>13.1f} us {unbounded:>15.1f} us {richlog:>13.1f} us")


if __name__ == "__main__":
    asyncio.run(main())
