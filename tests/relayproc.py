"""A real relay in a subprocess, and a JSON client that waits for events rather than sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import websockets

from shared.protocol import SUBPROTOCOL, decode_frame

_URL = re.compile(rb"wss?://([\d.]+):(\d+)/chat/")
START_TIMEOUT = 20.0

T = TypeVar("T")


class RelayProcess:
    """`python -m relay serve --port 0`, the port read from the line it prints on start."""

    def __init__(
        self, state_dir: Path, *args: str, port: int = 0, env: dict[str, str] | None = None
    ) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        command = [sys.executable, "-m", "relay", "serve", "--port", str(port)]
        command += ["--state-dir", str(state_dir), "--log-level", "warning", *args]
        state_dir.mkdir(parents=True, exist_ok=True)
        # stderr goes to a file: a pipe nobody reads would block a relay that logs a lot.
        self.stderr_path = state_dir / f"relay-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as stderr:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
        self.port = self._read_port()
        self.http = f"http://127.0.0.1:{self.port}"

    def _read_port(self) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            line = self.proc.stdout.readline() if ready else b""
            if not line:
                break
            found = _URL.search(line)
            if found:
                return int(found.group(2))
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"relay did not start: {self.stderr_text()}")

    def url(self, room: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/chat/{room}" + (f"?{query}" if query else "")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")


class JsonClient:
    """A chat.v1 client: splits frames into events and waits for the one a test expects."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.seen: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> JsonClient:
        ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], **kwargs)
        client = cls(ws)
        client.welcome = await client.expect("welcome")
        return client

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        while not self.events:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
            self.events.extend(decode_frame(frame))
        event = self.events.pop(0)
        self.seen.append(event)
        return event

    async def expect(self, kind: str, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The next event of type `kind` (and matching `fields`); others are skipped."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            event = await self.next(max(0.01, deadline - loop.time()))
            if event.get("type") == kind and all(event.get(k) == v for k, v in fields.items()):
                return event

    async def close(self) -> None:
        await self.ws.close()


async def closed(ws: websockets.ClientConnection, timeout: float = 5.0) -> tuple[int, str]:
    """Read until the relay closes the socket; the close code and reason it sent."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    assert ws.close_code is not None, "the relay did not close the socket"
    return ws.close_code, ws.close_reason or ""


async def eventually(
    check: Callable[[], Awaitable[T | None]], timeout: float = 5.0, interval: float = 0.02
) -> T:
    """Poll `check` (for state only visible over HTTP) until it returns a value, up to `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value is not None:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def metric(text: str, name: str) -> float:
    """One sample from a Prometheus text exposition, 0 when the series is absent."""
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name:
            return float(value)
    return 0.0


def seqs(events: list[dict[str, Any]]) -> list[int]:
    """The seqs of the message events among `events`, in order."""
    return [event["seq"] for event in events if event["type"] == "message"]


async def messages_until(client: JsonClient, last_seq: int) -> list[dict[str, Any]]:
    """Every message event up to and including seq `last_seq`."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["seq"] < last_seq:
        got.append(await client.expect("message"))
    return got
