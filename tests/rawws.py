"""A WebSocket client on a bare socket, for peers that misbehave in ways a library will not."""

from __future__ import annotations

import asyncio
import base64
import os


async def connect(port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a socket to the relay and complete the WebSocket handshake on `path`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(upgrade(path))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


def upgrade(path: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (payload under 126 bytes)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """The next server frame: its opcode and payload."""
    first, second = await reader.readexactly(2)
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)


async def close_code(reader: asyncio.StreamReader, timeout: float = 5.0) -> int:
    """Read frames until the server's close frame; the code in it."""
    async with asyncio.timeout(timeout):
        while True:
            opcode, payload = await read_frame(reader)
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big")
