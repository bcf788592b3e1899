"""A minimal RFC 6455 client on asyncio protocols, for the load generator only.

The `websockets` client caps at about 100k frames/s per core (BASELINE.md section 2), less than
the relays can deliver, so the load generator speaks the wire format itself: handshake, masked
text frames out, unmasked frames in, ping/pong and the close handshake. No extensions are
offered, so permessage-deflate stays off.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import socket
from collections.abc import Callable
from time import monotonic_ns

from websockets.speedups import apply_mask

HOST = "127.0.0.1"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
ABNORMAL = 1006

OnText = Callable[[bytes, int], None]


def frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 1 << 16:
        head = bytes((0x80 | opcode, 0xFE)) + size.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0xFF)) + size.to_bytes(8, "big")
    return head + mask + apply_mask(payload, mask)


class WsClient(asyncio.Protocol):
    """One connection. `on_text(payload, now_ns)` is called for every text message."""

    def __init__(self, path: str, port: int, subprotocol: str | None, on_text: OnText) -> None:
        self.path = path
        self.port = port
        self.subprotocol = subprotocol
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code: int | None = None
        self._key = base64.b64encode(os.urandom(16))
        self._handshaking = True
        self._buf = b""
        self._fragments: bytearray | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio subclass
        extra = b""
        if self.subprotocol:
            extra = b"Sec-WebSocket-Protocol: " + self.subprotocol.encode() + b"\r\n"
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (self.path.encode(), HOST.encode(), self.port, self._key, extra)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"lost during handshake: {exc!r}"))
        if not self.closed.done():
            self.closed.set_result(self.close_code or ABNORMAL)

    def data_received(self, data: bytes) -> None:
        if self._handshaking:
            data = self._handshake(data)
            if not data:
                return
        buf = self._buf + data if self._buf else data
        size = len(buf)
        pos = 0
        now = monotonic_ns()
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1] & 0x7F
            head = pos + 2
            if b1 == 126:
                if size - pos < 4:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = pos + 4
            elif b1 == 127:
                if size - pos < 10:
                    break
                b1 = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = pos + 10
            end = head + b1
            if end > size:
                break
            self._frame(b0, buf[head:end], now)
            pos = end
        self._buf = buf[pos:]

    # -- internals -------------------------------------------------------------------------------

    def _handshake(self, data: bytes) -> bytes:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._buf[:end].decode("latin-1").split("\r\n"), self._buf[end + 4 :]
        self._buf = b""
        self._handshaking = False
        headers = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        accept = base64.b64encode(hashlib.sha1(self._key + _GUID).digest()).decode()
        problem = None
        if head[0].split(" ")[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept:
            problem = f"handshake refused: {head[0]!r}"
        elif self.subprotocol and headers.get("sec-websocket-protocol") != self.subprotocol:
            problem = f"subprotocol {self.subprotocol} not accepted"
        if problem is not None:
            self.opened.set_exception(ConnectionError(problem))
            assert self.transport is not None
            self.transport.abort()
            return b""
        self.opened.set_result(None)
        return rest

    def _frame(self, b0: int, payload: bytes, now: int) -> None:
        opcode = b0 & 0x0F
        final = b0 & 0x80
        if opcode == 1 and final:
            self.on_text(payload, now)
        elif opcode in (0, 1, 2):
            if opcode:
                self._fragments = bytearray(payload) if opcode == 1 else None
            elif self._fragments is not None:
                self._fragments += payload
            if final and self._fragments is not None:
                self.on_text(bytes(self._fragments), now)
                self._fragments = None
        elif opcode == 9:
            self._write(frame(0xA, payload))
        elif opcode == 8:
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._write(frame(0x8, payload[:2]))
            assert self.transport is not None
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- API -------------------------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        self._write(frame(0x1, text.encode()))

    def pause(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume(self) -> None:
        assert self.transport is not None
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self) -> None:
        """Start the close handshake; the relay's answer or a 1 s timeout ends it."""
        if self.transport is None or self.transport.is_closing():
            return
        self._write(frame(0x8, (1000).to_bytes(2, "big")))
        asyncio.get_running_loop().call_later(1.0, self.transport.abort)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect(
    port: int,
    path: str,
    on_text: OnText,
    subprotocol: str | None = None,
    rcvbuf: int = 0,
    timeout: float = 30.0,
) -> WsClient:
    """Open a connection to 127.0.0.1; `rcvbuf` bounds the receive window (slow reader)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (HOST, port)), timeout)
        _, client = await loop.create_connection(
            lambda: WsClient(path, port, subprotocol, on_text), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    try:
        await asyncio.wait_for(client.opened, timeout)
    except BaseException:
        client.abort()
        raise
    return client
