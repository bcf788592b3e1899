"""Counters the relay keeps for /metrics, rendered in the Prometheus text format.

Plain integer attributes rather than a metrics library: they are bumped on the fan-out path,
where an attribute increment is all we can afford.
"""

from __future__ import annotations

from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self.connections_total = 0
        self.messages_in = 0
        self.messages_out = 0
        self.dms = 0
        self.slow_consumers = 0
        self.floods = 0
        self.errors: Counter[str] = Counter()

    def render(self, connections: int, rooms: int, users: int) -> str:
        rows = [
            ("chat_connections", "gauge", "Open WebSocket connections.", connections),
            ("chat_rooms", "gauge", "Rooms with at least one member.", rooms),
            ("chat_users", "gauge", "Connected users (one per identity).", users),
            ("chat_connections_total", "counter", "Connections accepted.", self.connections_total),
            ("chat_messages_in_total", "counter", "Room messages posted.", self.messages_in),
            ("chat_messages_out_total", "counter", "Events queued to members.", self.messages_out),
            ("chat_dms_total", "counter", "Private messages sent.", self.dms),
            (
                "chat_slow_consumers_total",
                "counter",
                "Connections closed because they stopped reading.",
                self.slow_consumers,
            ),
            ("chat_floods_total", "counter", "Connections closed for flooding.", self.floods),
        ]
        lines: list[str] = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += [
            "# HELP chat_errors_total Error events sent, by code.",
            "# TYPE chat_errors_total counter",
        ]
        for code, count in sorted(self.errors.items()):
            lines.append(f'chat_errors_total{{code="{code}"}} {count}')
        return "\n".join(lines) + "\n"


def render_store(failures: int, pending: int, healthy: bool) -> str:
    """The store's health, from the writer thread's own counters (read, never reset)."""
    rows = [
        (
            "chat_store_failures_total",
            "counter",
            "Attempts to write to the store that failed (disk full, read-only, deleted).",
            failures,
        ),
        ("chat_store_pending", "gauge", "Acknowledged changes waiting to be written.", pending),
        ("chat_store_healthy", "gauge", "1 while the store takes writes, else 0.", int(healthy)),
    ]
    lines: list[str] = []
    for name, kind, help_text, value in rows:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(lines) + "\n"
