"""What a socket may cost before and around the chat: caps, deadlines and sizes, at the protocol.

uvicorn holds a connection that sends nothing, or a request head one byte at a time, for as
long as the peer likes; it reads a request head of any size and buffers a request body before
the app can refuse it; and it answers every ping even when the peer reads none of the pongs.
These are checks a Starlette app cannot make (they happen before, or beneath, the ASGI call),
so the relay runs uvicorn with protocol classes that make them: subclasses of uvicorn's
httptools protocol and of its WebSocket protocols, built by `protocols()`.

The classes are uvicorn internals, which is why pyproject pins uvicorn to one minor release;
relay/cli.py runs without the guard (and says so) when they cannot be imported.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay.direct import SANSIO
from relay.metrics import Metrics

log = logging.getLogger("relay.guard")

HEAD_BYTES = 8192  # request line and headers together, as most servers and proxies allow
_REASONS = {408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long"}
_REASONS |= {431: "Request Header Fields Too Large", 503: "Service Unavailable"}


class Guard:
    """Open sockets by client address, and the limits every protocol object checks."""

    def __init__(
        self,
        metrics: Metrics,
        max_connections: int,
        max_per_address: int,
        handshake_timeout: float,
        max_body_bytes: int,
        control_budget: int,
    ) -> None:
        self.metrics = metrics
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.handshake_timeout = handshake_timeout
        self.max_body_bytes = max_body_bytes
        self.control_budget = control_budget
        self._open: dict[asyncio.BaseTransport, str] = {}
        self._per_address: dict[str, int] = {}

    def admit(self, transport: asyncio.BaseTransport) -> str | None:
        """Count the socket in, or the reason it is refused ("capacity" or "address")."""
        address = _address(transport)
        held = self._per_address.get(address, 0)
        if self.max_connections and len(self._open) >= self.max_connections:
            reason = "capacity"
        elif self.max_per_address and held >= self.max_per_address:
            reason = "address"
        else:
            self._open[transport] = address
            self._per_address[address] = held + 1
            return None
        self.metrics.refused[reason] += 1
        return reason

    def release(self, transport: asyncio.BaseTransport) -> None:
        address = self._open.pop(transport, None)
        if address is None:
            return
        held = self._per_address[address] - 1
        if held:
            self._per_address[address] = held
        else:
            del self._per_address[address]


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _response(status: int, detail: str) -> bytes:
    code = {408: "timeout", 413: "too_large", 503: "unavailable"}.get(status, "bad_request")
    body = json.dumps({"error": code, "detail": detail}).encode()
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP protocol, plus caps, a request deadline and head and body size limits."""

    guard: Guard  # set on the subclass `protocols()` builds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False
        self._in_head = True
        self._head = 0
        self._line_done = False
        self._body = 0
        reason = self.guard.admit(transport)
        if reason is not None:
            detail = "too many connections" + (" from your address" if reason == "address" else "")
            self._refuse(503, detail)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self.guard.release(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:
            end = data.find(b"\r\n\r\n")
            size = self._head + (len(data) if end < 0 else end + 4)
            if size > HEAD_BYTES:
                room = max(0, HEAD_BYTES - self._head)
                line_done = self._line_done or data.find(b"\n", 0, room) >= 0
                self.guard.metrics.oversized_heads += 1
                if line_done:
                    self._refuse(431, f"request headers are larger than {HEAD_BYTES} bytes")
                else:
                    self._refuse(414, f"request line is longer than {HEAD_BYTES} bytes")
                return
            self._head = size
            self._line_done = self._line_done or b"\n" in data
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._body = 0
        if self._deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head = 0
        self._line_done = False
        length = dict(self.headers).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.guard.max_body_bytes:
            self._too_large()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._body += len(body)
        if self._body > self.guard.max_body_bytes:
            self._too_large()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._disarm()
        if not self._refused:
            super().on_message_complete()

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes over the transport, and its count in the guard with it.
        self._disarm()
        super().handle_websocket_upgrade()

    def _too_large(self) -> None:
        self.guard.metrics.bodies_too_large += 1
        self._refuse(413, f"request body is larger than {self.guard.max_body_bytes} bytes")

    def _arm(self) -> None:
        timeout = self.guard.handshake_timeout
        if timeout > 0:
            self._deadline = self.loop.call_later(timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        """The request (line, headers, body) did not arrive in time: a slow or idle peer."""
        self._deadline = None
        self.guard.metrics.handshake_timeouts += 1
        if self.cycle is None or not self.cycle.response_started:
            self._refuse(408, "request not received in time")
        else:
            self.transport.close()

    def _refuse(self, status: int, detail: str) -> None:
        self._refused = True
        self._disarm()
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        if self.cycle is not None:
            # The app (reading the body) gets a disconnect; what it may still send goes nowhere.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(_response(status, detail))
        self.transport.close()


def _released(base: type[asyncio.Protocol], guard: Guard) -> dict[str, Any]:
    """The connection_lost that gives a WebSocket's slot in the guard back."""

    def connection_lost(self: Any, exc: Exception | None) -> None:
        guard.release(self.transport)
        base.connection_lost(self, exc)

    return {"connection_lost": connection_lost}


def _pong_budget(base: type[asyncio.Protocol], guard: Guard) -> dict[str, Any]:
    """Pongs count against the send budget while the peer is not reading (sansio only).

    uvicorn answers every ping at once, straight into the transport, so a peer that pings
    without reading grows the relay's write buffer without bound. While the transport is
    paused (the peer is not reading), pongs are added up; past the connection's send budget
    the socket is cut, as the slow-consumer rule cuts one whose event queue overflows.
    """

    def handle_ping(self: Any) -> None:
        output = b"".join(self.conn.data_to_send())
        if self.transport.is_closing():
            return  # cut already: the rest of what arrived with the last read goes unanswered
        if not self.writable.is_set():
            self.pongs_owed = getattr(self, "pongs_owed", 0) + len(output)
            if self.pongs_owed > guard.control_budget:
                guard.metrics.ping_floods += 1
                log.warning("closing %s: pings without reading the pongs", _address(self.transport))
                self.transport.abort()
                return
        self.transport.write(output)

    def resume_writing(self: Any) -> None:
        self.pongs_owed = 0
        base.resume_writing(self)

    return {"handle_ping": handle_ping, "resume_writing": resume_writing}


def protocols(
    guard: Guard, ws_protocol: type[asyncio.Protocol]
) -> tuple[type[asyncio.Protocol], type[asyncio.Protocol]]:
    """The HTTP and WebSocket protocol classes for uvicorn's `http` and `ws` settings."""
    http = type("RelayHttp", (GuardedHttp,), {"guard": guard})
    methods = _released(ws_protocol, guard)
    if SANSIO is not None and issubclass(ws_protocol, SANSIO):
        methods |= _pong_budget(ws_protocol, guard)
    ws = type("Relay" + ws_protocol.__name__, (ws_protocol,), methods)
    return http, ws
