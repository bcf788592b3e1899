"""A WebSocket connection's outgoing side: a bounded queue, drained without blocking fan-out.

Fan-out only appends to the queue, so one slow socket never holds up a room. What piled up
is sent together: in chat.v1 as one frame of newline-separated events (the per-frame cost
dominates at high fan-out), in the plain protocol one frame per line. On uvicorn's sansio
protocol the queue is written straight to the transport at the end of the loop pass
(relay/direct.py); a writer task takes over only while the socket is backed up or closing,
or on servers where every frame must be an ASGI send. A queue that grows past its budget
means the peer stopped reading; the hub then drops it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relay.core import Client, Outgoing
from relay.direct import DirectSocket, Flusher, text_frame
from shared import protocol as p

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

CLOSE_TIMEOUT = 10.0
# The close frame waits behind what the kernel still holds for the peer; a reader that paused
# and resumes within this time still learns why it was dropped.
CLOSE_FRAME_TIMEOUT = 30.0
# A batch frame stays well under the 1 MiB frame limit clients commonly keep (websockets'
# default), even at 4 UTF-8 bytes per character; a large replay goes out as several frames.
BATCH_CHARS = 128 * 1024


class Connection(Client):
    """A writer task exists only while the queue cannot be written at once.

    An idle connection (most of them, most of the time) then costs no task and no coroutine.
    """

    __slots__ = (
        "_base_limit",
        "_closing",
        "_direct",
        "_flusher",
        "_limit",
        "_marked",
        "_queue",
        "_queued",
        "_send",
        "_writer",
    )

    def __init__(
        self, send: Send, json: bool, queue_limit: int, flusher: Flusher, address: str = ""
    ) -> None:
        super().__init__(json, address)
        self._send = send
        self._direct = DirectSocket.behind(send)
        self._flusher = flusher
        self._marked = False
        self._base_limit = self._limit = queue_limit
        # chat.v1: event lines (batched per send). Plain: ready frames on the direct path,
        # else lines. A list, not a deque: emptied with clear(), it holds no memory while idle.
        self._queue: list[Any] = []
        self._queued = 0
        self._closing: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def direct(self) -> bool:
        """Whether frames go straight to the transport (relay/direct.py), not through `send`."""
        return self._direct is not None

    def deliver(self, event: Outgoing) -> bool:
        if self._closing is not None:
            return True
        if self.json:
            item: str | bytes = event.json
        elif event.plain is None:
            return True
        elif self._direct is not None:
            item = event.frame or _plain_frame(event)
        else:
            item = event.plain
        self._queued += len(item)
        if self._queued > self._limit:
            return False
        self._queue.append(item)
        if self._writer is None:
            if self._direct is None:
                self._writer = asyncio.get_running_loop().create_task(self._write())
            elif not self._marked:
                self._marked = True
                self._flusher.mark(self)
        return True

    def flush(self) -> None:
        """End of the loop pass: write the queue in one go, or leave it to a writer task."""
        self._marked = False
        direct = self._direct
        if self._writer is not None or not self._queue or direct is None:
            return
        if direct.writable():
            direct.write(self._take_all())
        elif direct.gone():
            self._drop_queue()
        else:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def fail(self) -> None:
        self._marked = False
        self._drop_queue()
        self.close(p.CLOSE_INTERNAL_ERROR, "internal error", flush=False)

    def preload(self, events: list[Outgoing]) -> None:
        # The budget grows by the preload until the writer has sent it all (queue empty).
        self._limit += sum(len(event.json) for event in events)
        super().preload(events)

    def close(self, code: int, reason: str, flush: bool) -> None:
        if self._closing is not None:
            return
        self._closing = (code, p.close_reason(reason))
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
        queue, direct = self._queue, self._direct
        while queue:
            if direct is None:
                for text in self._take_sends():
                    await self._send({"type": "websocket.send", "text": text})
                continue
            await direct.wait_writable()
            if direct.gone():
                self._drop_queue()
            else:
                direct.write(self._take_all())
        self._limit = self._base_limit
        if self._closing is not None:
            await self._send_close()
        else:
            self._writer = None

    def _take_sends(self) -> list[str]:
        """Everything queued, as the texts of ASGI sends: batches (chat.v1) or single lines."""
        if self.json:
            return self._take_batches()
        lines = self._queue[:]
        self._queue.clear()
        self._queued = 0
        return lines

    def _take_batches(self) -> list[str]:
        """The queued events joined into frames of at most BATCH_CHARS characters each."""
        queue, batches, start, size = self._queue, [], 0, -1
        for index, line in enumerate(queue):
            if size >= 0 and size + 1 + len(line) > BATCH_CHARS:
                batches.append("\n".join(queue[start:index]))
                start, size = index, -1
            size += 1 + len(line)
        batches.append("\n".join(queue[start:]))
        queue.clear()
        self._queued = 0
        return batches

    def _take_all(self) -> bytes:
        """Everything queued, framed for one transport write."""
        queue = self._queue
        if self.json:
            data = b"".join([text_frame(batch.encode()) for batch in self._take_batches()])
        else:
            data = b"".join(queue)
            queue.clear()
        self._queued = 0
        self._limit = self._base_limit
        return data

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued = 0

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


def _plain_frame(event: Outgoing) -> bytes:
    assert event.plain is not None
    event.frame = text_frame(event.plain.encode())
    return event.frame
