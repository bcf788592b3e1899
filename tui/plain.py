"""`chat-tui --plain connect ROOM`: stdin lines in, `name :: text` lines out, for scripts.

It exits once stdin has ended and the relay has answered everything sent (every say echoed),
so `echo hi | chat-tui --plain connect room1` really delivers before it returns: 0 when all of
it was taken, 1 when the relay refused anything (a line too large, a DM to nobody).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TextIO

from shared.protocol import Event, sender_label
from shared.sanitize import one_line
from tui.client.commands import (
    REGISTER_HINT,
    CommandError,
    help_lines,
    is_command,
    literal,
    parse,
)
from tui.client.events import describe
from tui.client.link import Backoff, Identity, LinkFailed, RoomLink, State, Status
from tui.config import Config
from tui.http_api import ApiError, list_rooms

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3


@dataclass
class PlainOptions:
    room: str
    name: str | None = None
    json: bool = False
    events: bool = False
    count: int | None = None
    timeout: float | None = None
    backlog: int = 0


class PlainSession:
    def __init__(
        self,
        config: Config,
        options: PlainOptions,
        identity: Identity,
        stdout: TextIO = sys.stdout,
        stderr: TextIO = sys.stderr,
    ) -> None:
        self.config = config
        self.options = options
        self.identity = identity
        self.out = stdout
        self.err = stderr
        self.received = 0
        self.failed = 0
        self.closed_room = False
        self.input_done = False
        self.finished = asyncio.Event()
        self.name_ready = asyncio.Event()
        self._rename: str | None = None
        self._down = False
        self.link = RoomLink(
            config.server,
            options.room,
            identity,
            self._event,
            self._status,
            backlog=options.backlog,
            backoff=Backoff(cap=config.reconnect_max_seconds),
            fail_fast=True,
            on_idle=self._check_done,
        )

    # -- output -----------------------------------------------------------------------------------

    def _print(self, line: str, system: bool = False) -> None:
        stream = self.err if system and not self.options.events else self.out
        print(line, file=stream, flush=True)

    def _event(self, event: Event, request: Event | None) -> None:
        if self.finished.is_set():
            return
        kind = event.get("type")
        if self.options.json:
            # ASCII-escaped JSON, as the relay sent it: C1 controls in text stay inert.
            self._print(json.dumps(event))
        elif kind == "message":
            self._print(f"{one_line(sender_label(event))} :: {one_line(str(event.get('text')))}")
        elif kind == "dm":
            sender, to = one_line(str(event.get("from"))), one_line(str(event.get("to")))
            self._print(f"{sender} -> {to} :: {one_line(str(event.get('text')))}")
        else:
            line = describe(event, request)
            if line is not None:
                # The operator's announcement is for whoever reads the output, like a message.
                self._print(f"* {line}", system=kind != "announce")
        if kind == "welcome":
            self._welcomed(event)
        elif kind == "error":
            # Anything the relay refused was not delivered: the exit status says so.
            self.failed += 1
            if request is not None and request.get("cid") == self._rename:
                self._note(f"chat-tui: cannot use the name {one_line(str(self.options.name))}")
                self.finished.set()
        elif kind == "closed" and request is not None:
            self.closed_room = True
        elif kind == "nick" and request is not None and request.get("cid") == self._rename:
            self.name_ready.set()
        if kind in ("message", "dm") and not event.get("replay"):
            self.received += 1
        self._check_done()

    def _welcomed(self, event: Event) -> None:
        """With --name, nothing typed goes out before the rename is done: a bot's first line
        must not appear under the random name it was given."""
        wanted = self.options.name
        if self.name_ready.is_set() or self._rename is not None:
            return
        if wanted and wanted != event.get("you"):
            self._rename = self.link.send({"type": "nick", "name": wanted})
        else:
            self.name_ready.set()

    def _status(self, status: Status) -> None:
        """One line per outage, not one per attempt."""
        if status.state == State.CONNECTED:
            self._down = False
        elif status.state == State.RECONNECTING and not self._down:
            self._down = True
            detail = f" ({one_line(status.detail)})" if status.detail else ""
            self._note(f"* disconnected from {status.url}{detail}; reconnecting")

    # -- input ------------------------------------------------------------------------------------

    async def _read_input(self, stdin: TextIO) -> None:
        await self.name_ready.wait()
        async for line in _lines(stdin):
            if await self._handle_line(line.rstrip("\r\n")):
                break
        self.input_done = True
        self._check_done()

    async def _handle_line(self, line: str) -> bool:
        """Send or run one line; True when it asks to stop reading (/quit)."""
        if not line.strip():
            return False
        if not is_command(line):
            self.link.say(literal(line))
            return False
        try:
            command = parse(line)
            request = command.request(me=self.identity.name)
        except CommandError as error:
            self._note(f"chat-tui: {error}")
            return False
        if request is not None:
            self.link.send(request)
        elif command.name == "quit":
            return True
        elif command.name == "register":
            self._note(f"chat-tui: {REGISTER_HINT}")
        elif command.name == "help":
            for help_line in help_lines():
                print(help_line, file=self.err, flush=True)
        elif command.name == "rooms":
            try:
                for room in await list_rooms(self.config.http_base, self.identity.token):
                    room_name, members = one_line(str(room.get("room"))), room.get("members")
                    private = "  invite-only" if room.get("private") else ""
                    self._print(f"* #{room_name} {one_line(str(members))}{private}", True)
            except ApiError as error:
                self._note(f"chat-tui: {one_line(str(error))}")
        else:
            self._note(f"chat-tui: /{command.name} is not available in --plain")
        return False

    def _note(self, line: str) -> None:
        print(line, file=self.err, flush=True)

    def _check_done(self) -> None:
        count = self.options.count
        if count is not None:
            if self.received >= count:
                self.finished.set()
        elif self.input_done and self.link.idle:
            self.finished.set()

    # -- the run ----------------------------------------------------------------------------------

    async def run(self, stdin: TextIO) -> int:
        link_task = asyncio.create_task(self.link.run())
        input_task = asyncio.create_task(self._read_input(stdin))
        done_task = asyncio.create_task(self.finished.wait())
        try:
            done, _ = await asyncio.wait(
                {link_task, done_task},
                timeout=self.options.timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if link_task in done and self.closed_room:
                # The owner's own /close ends the room and the run: that is what was asked.
                return EXIT_FAILED if self.failed else EXIT_OK
            if link_task in done:
                error = link_task.exception()
                message = str(error) if isinstance(error, LinkFailed) else repr(error)
                print(f"chat-tui: {one_line(message)}", file=self.err, flush=True)
                return EXIT_FAILED
            if done_task in done or self._complete_enough():
                return EXIT_FAILED if self.failed else EXIT_OK
            print(f"chat-tui: timed out after {self.options.timeout:g}s", file=self.err, flush=True)
            return EXIT_TIMEOUT
        finally:
            for task in (link_task, input_task, done_task):
                task.cancel()
            await asyncio.gather(link_task, input_task, done_task, return_exceptions=True)

    def _complete_enough(self) -> bool:
        """At the timeout: fine if nothing was left to do (just listening), else a failure."""
        return self.options.count is None and not self.input_done and self.link.idle


async def _lines(stdin: TextIO) -> AsyncIterator[str]:
    """Lines from stdin without a blocking thread, so the process can exit while it is open.

    Files and /dev/null cannot be watched by the event loop; they never block, so read directly.
    """
    fd = stdin.fileno()
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)):
        for line in stdin:
            yield line
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(fd), "rb")
    )
    try:
        while raw := await reader.readline():
            yield raw.decode("utf-8", errors="replace")
    finally:
        transport.close()
