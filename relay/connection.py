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
# The close frame waits behind what the kernel still holds for the peer; a reader that paused
# and resumes within this time still learns why it was dropped.
CLOSE_FRAME_TIMEOUT = 30.0
# A batch frame stays well under the 1 MiB frame limit clients commonly keep (websockets'
# default), even at 4 UTF-8 bytes per character; a large replay goes out as several frames.
BATCH_CHARS = 128 * 1024


class Connection(Client):
    """The writer task exists only while there is something to send.

    An idle connection (most of them, most of the time) then costs no task and no coroutine
    frame, and starting a writer for a burst costs about what waking a parked one would.
    """

    __slots__ = ("_base_limit", "_closing", "_limit", "_queue", "_queued", "_send", "_writer")

    def __init__(self, send: Send, json: bool, queue_limit: int) -> None:
        super().__init__(json)
        self._send = send
        self._base_limit = self._limit = queue_limit
        self._queue: deque[str] = deque()
        self._queued = 0
        self._closing: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None

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
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
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
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())
        # A peer that does not take what is queued within the timeout loses it.
        asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._close_now)

    def _close_now(self) -> None:
        if self._writer is not None and self._writer.done():
            return
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()
        self._writer = asyncio.get_running_loop().create_task(self._send_close())

    async def _write(self) -> None:
        queue, send = self._queue, self._send
        while queue:
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
        self._limit = self._base_limit
        if self._closing is not None:
            await self._send_close()
        else:
            self._writer = None

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
        await asyncio.wait_for(self._send(message), CLOSE_FRAME_TIMEOUT)

    async def finish(self) -> None:
        """After the peer is gone: stop writing. After a close we started: let it complete."""
        writer = self._writer
        if writer is None:
            return
        if self._closing is None:
            writer.cancel()
        await asyncio.wait({writer})
        if not writer.cancelled():
            # Retrieve it: a peer that vanished mid-send, or a close that timed out, is routine.
            writer.exception()
