"""A WebSocket connection's outgoing side: a bounded queue drained by one writer task.

Fan-out only appends to the queue, so one slow socket never holds up a room. The writer sends
whatever piled up since its last send: in chat.v1 as one frame of newline-separated events
(the per-frame cost dominates at high fan-out), in the plain protocol one frame per line.
A queue that grows past its budget means the peer stopped reading; the hub then drops it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relay.core import Client, Outgoing

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CLOSE_TIMEOUT = 10.0
# A batch frame stays well under the 1 MiB frame limit clients commonly keep (websockets'
# default), even at 4 UTF-8 bytes per character; a large replay goes out as several frames.
BATCH_CHARS = 128 * 1024


class Connection(Client):
    __slots__ = (
        "_base_limit",
        "_closing",
        "_limit",
        "_queue",
        "_queued",
        "_send",
        "_wake",
        "_writer",
    )

    def __init__(self, send: Send, json: bool, queue_limit: int) -> None:
        super().__init__(json)
        self._send = send
        self._base_limit = self._limit = queue_limit
        self._queue: deque[str] = deque()
        self._queued = 0
        self._wake: asyncio.Future[None] | None = None
        self._closing: tuple[int, str] | None = None
        self._writer = asyncio.get_running_loop().create_task(self._write())

    def deliver(self, event: Outgoing) -> bool:
        if self._closing is not None:
            return True
        line = event.json if self.json else event.plain
        if line is None:
            return True
        self._queued += len(line)
        if self._queued > self._limit:
            return False
        self._queue.append(line)
        if self._wake is not None:
            self._wake_writer()
        return True

    def preload(self, events: list[Outgoing]) -> None:
        # The budget grows by the preload until the writer has sent it all (queue empty).
        self._limit += sum(len(event.json) for event in events)
        super().preload(events)

    def close(self, code: int, reason: str, flush: bool) -> None:
        if self._closing is not None:
            return
        self._closing = (code, reason)
        if not flush:
            self._close_now()
            return
        self._wake_writer()
        # A peer that does not take what is queued within the timeout loses it.
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_now)

    def _close_now(self) -> None:
        if self._writer.done():
            return
        self._queue.clear()
        self._writer.cancel()
        self._writer = asyncio.get_running_loop().create_task(self._send_close())

    def _wake_writer(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set_result(None)

    async def _write(self) -> None:
        queue, send, loop = self._queue, self._send, asyncio.get_running_loop()
        while True:
            if not queue:
                self._limit = self._base_limit
                if self._closing is not None:
                    break
                self._wake = loop.create_future()
                await self._wake
                continue
            if self.json and len(queue) > 1 and self._queued <= BATCH_CHARS:
                text = "\n".join(queue)
                self._queued -= len(text) - len(queue) + 1
                queue.clear()
            elif self.json and len(queue) > 1:
                text = self._take_batch()
            else:
                text = queue.popleft()
                self._queued -= len(text)
            await send({"type": "websocket.send", "text": text})
        await self._send_close()

    def _take_batch(self) -> str:
        """The oldest queued events that fit in one frame of at most BATCH_CHARS."""
        queue = self._queue
        lines = [queue.popleft()]
        size = len(lines[0])
        while queue and size + 1 + len(queue[0]) <= BATCH_CHARS:
            lines.append(queue.popleft())
            size += 1 + len(lines[-1])
        self._queued -= size - len(lines) + 1
        return "\n".join(lines)

    async def _send_close(self) -> None:
        assert self._closing is not None
        code, reason = self._closing
        message = {"type": "websocket.close", "code": code, "reason": reason}
        await asyncio.wait_for(self._send(message), CLOSE_TIMEOUT)

    async def finish(self) -> None:
        """After the peer is gone: stop writing. After a close we started: let it complete."""
        if self._closing is None:
            self._writer.cancel()
        await asyncio.wait({self._writer})
        if not self._writer.cancelled():
            # Retrieve it: a peer that vanished mid-send, or a close that timed out, is routine.
            self._writer.exception()
