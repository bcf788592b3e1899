"""Writing frames straight to uvicorn's transport, one write per connection per loop pass.

Each ASGI `websocket.send` is one frame and one `write()` system call, and at high fan-out
that per-frame cost is most of the relay's work (docs/performance.md). With uvicorn's
`websockets-sansio` protocol behind the endpoint's `send`, the relay can instead frame the
events itself and hand each socket everything queued for it in one `transport.write()`.
With any other server or protocol implementation, a uvicorn that moved that class, or anything
that wraps `send` (uvicorn's `--log-level trace` does), the relay keeps using plain ASGI sends.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("relay.direct")


def _sansio_class() -> type[WebSocketsSansIOProtocol] | None:
    """uvicorn's sansio protocol class, or None when this uvicorn has none where we look.

    A private module: pyproject pins uvicorn to the minor release this was tested with, and a
    release that moves it costs the fast path, never the relay.
    """
    try:
        module = importlib.import_module("uvicorn.protocols.websockets.websockets_sansio_impl")
    except ImportError:
        return None
    found = getattr(module, "WebSocketsSansIOProtocol", None)
    return found if isinstance(found, type) else None


SANSIO = _sansio_class()

_TEXT = 0x81  # FIN + text opcode; server frames are never masked (RFC 6455 5.1)


def text_frame(payload: bytes) -> bytes:
    size = len(payload)
    if size < 126:
        return bytes((_TEXT, size)) + payload
    if size < 65536:
        return bytes((_TEXT, 126)) + size.to_bytes(2, "big") + payload
    return bytes((_TEXT, 127)) + size.to_bytes(8, "big") + payload


class DirectSocket:
    """uvicorn's protocol object for one WebSocket, used only for raw writes and backpressure.

    Control frames (ping, close) still go through uvicorn, which writes them whole, so our
    frames and its frames never interleave mid-frame.
    """

    __slots__ = ("_protocol",)

    def __init__(self, protocol: WebSocketsSansIOProtocol) -> None:
        self._protocol = protocol

    @classmethod
    def behind(cls, send: Callable[..., Any]) -> DirectSocket | None:
        """The direct path for an ASGI `send` that is uvicorn's sansio protocol, else None."""
        protocol = getattr(send, "__self__", None)
        if SANSIO is None or not isinstance(protocol, SANSIO):
            return None
        return cls(protocol)

    def writable(self) -> bool:
        protocol = self._protocol
        return protocol.writable.is_set() and not self.gone()

    def gone(self) -> bool:
        """Closing, or closed: nothing more may be written."""
        return self._protocol.close_sent or self._protocol.transport.is_closing()

    async def wait_writable(self) -> None:
        await self._protocol.writable.wait()

    def write(self, data: bytes) -> None:
        self._protocol.transport.write(data)


def write_path(ws_protocol: type[Any] | None, send_wrapped: bool) -> str:
    """ "direct" when connections will find the sansio protocol behind `send`, else "asgi"."""
    direct = SANSIO is not None and ws_protocol is not None and issubclass(ws_protocol, SANSIO)
    return "direct" if direct and not send_wrapped else "asgi"


class Flushable(Protocol):
    def flush(self) -> None: ...

    def fail(self) -> None:
        """Give up on this connection after an unexpected error: close it, drop its queue."""


class Flusher:
    """Collects the connections that got events during one loop pass and writes them at its end.

    A message to a room of N becomes N queue appends now and N writes once the handler that
    posted it (and any others ready in the same pass) have run, so events that arrive
    together leave together.
    """

    def __init__(self) -> None:
        self._pending: list[Flushable] = []

    def mark(self, connection: Flushable) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        self._pending.append(connection)

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        for connection in pending:
            # All connections marked in a pass share this loop: one that fails must not leave
            # the others unwritten (and never marked again, since they still look marked).
            try:
                connection.flush()
            except Exception as error:
                log.error("flush failed, closing that connection: %r", error)
                connection.fail()
