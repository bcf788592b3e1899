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
        self.internal_errors = 0
        # relay/guard.py: sockets refused or cut before or beneath the chat.
        self.refused: Counter[str] = Counter()
        self.handshake_timeouts = 0
        self.oversized_heads = 0
        self.bodies_too_large = 0
        self.ping_floods = 0
        # "direct" (frames written straight to uvicorn's transport) or "asgi" (one send each).
        self.write_path = "asgi"
        self.errors: Counter[str] = Counter()

    def render(self, connections: int, rooms: int, users: int) -> str:
        rows = [
            # Not `chat_connections`: Prometheus clients treat a counter `X_total` as family `X`,
            # so that gauge would collide with `chat_connections_total`.
            ("chat_connections_open", "gauge", "Open WebSocket connections.", connections),
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
            (
                "chat_internal_errors_total",
                "counter",
                "Connections closed with 1011 because delivering to them failed.",
                self.internal_errors,
            ),
            (
                "chat_handshake_timeouts_total",
                "counter",
                "Sockets closed because a request or handshake did not arrive in time.",
                self.handshake_timeouts,
            ),
            (
                "chat_oversized_heads_total",
                "counter",
                "Requests refused with 414 or 431 (request line or headers over 8 KiB).",
                self.oversized_heads,
            ),
            (
                "chat_bodies_too_large_total",
                "counter",
                "Requests refused with 413 while their body was still arriving.",
                self.bodies_too_large,
            ),
            (
                "chat_ping_floods_total",
                "counter",
                "Connections cut for sending pings without reading the pongs.",
                self.ping_floods,
            ),
        ]
        lines: list[str] = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += [
            "# HELP chat_refused_connections_total Sockets refused with 503, by reason"
            " (capacity: --max-connections; address: --max-connections-per-address).",
            "# TYPE chat_refused_connections_total counter",
        ]
        for reason in ("address", "capacity"):
            lines.append(
                f'chat_refused_connections_total{{reason="{reason}"}} {self.refused[reason]}'
            )
        lines += [
            "# HELP chat_write_path How frames reach sockets: direct (one transport write per"
            " pass) or asgi (one ASGI send per frame, about a third of the throughput).",
            "# TYPE chat_write_path gauge",
            f'chat_write_path{{path="{self.write_path}"}} 1',
        ]
        lines += [
            "# HELP chat_errors_total Error events sent, by code.",
            "# TYPE chat_errors_total counter",
        ]
        for code, count in sorted(self.errors.items()):
            lines.append(f'chat_errors_total{{code="{code}"}} {count}')
        return "\n".join(lines) + "\n"
