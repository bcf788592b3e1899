"""`chat-tui --plain connect ROOM`: stdin lines in, `name :: text` lines out, for scripts.

It exits 0 once stdin has ended and the relay has answered everything sent (every say echoed),
so `echo hi | chat-tui --plain connect room1` really delivers before it returns.
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

from shared.protocol import Event, name_error, sender_label
from shared.sanitize import one_line
from tui.commands import CommandError, help_lines, is_command, literal, parse
from tui.config import Config
from tui.connection import Backoff, Identity, LinkFailed, RoomLink, State, Status
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
        self.input_done = False
        self.finished = asyncio.Event()
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

    def _event(self, event: Event) -> None:
        if self.finished.is_set():
            return
        kind = event.get("type")
        if self.options.json:
            # ASCII-escaped JSON: C1 controls in text stay inert even if a terminal shows it.
            self._print(json.dumps({k: v for k, v in event.items() if k != "request"}))
        else:
            self._print_event(kind, event)
        if kind == "welcome":
            wanted = self.options.name
            if wanted and wanted != event.get("you"):
                self.link.send({"type": "nick", "name": wanted})
        if kind in ("message", "dm") and not event.get("replay"):
            self.received += 1
        self._check_done()

    def _print_event(self, kind: object, event: Event) -> None:
        def get(field: str) -> str:
            return one_line(str(event.get(field, "")))

        if kind == "message":
            self._print(f"{one_line(sender_label(event))} :: {get('text')}")
        elif kind == "dm":
            self._print(f"{get('from')} -> {get('to')} :: {get('text')}")
        elif kind == "welcome":
            self._print(f"* joined #{get('room')} as {get('you')}", system=True)
        elif kind in ("join", "leave"):
            what = "joined" if kind == "join" else "left"
            self._print(f"* {get('name')} {what}", system=True)
        elif kind == "nick":
            self._print(f"* {get('old')} is now known as {get('new')}", system=True)
        elif kind == "members":
            members = ", ".join(one_line(str(m)) for m in event.get("members", []))
            self._print(f"* members: {members}", system=True)
        elif kind == "error":
            self._print(f"* error {get('code')}: {get('detail')}", system=True)
        elif kind == "dm_request":
            text = f"* {get('from')} wants to send you private messages (/accept {get('from')})"
            self._print(text, system=True)
        elif kind in ("dm_accepted", "dm_declined"):
            self._print(f"* {get('by')} {kind.removeprefix('dm_')} your DMs", system=True)
        elif kind == "topic":
            self._print(f"* {get('by')} set the topic: {get('topic')}", system=True)
        elif kind == "read":
            self._print(f"* {get('name')} read up to seq {get('seq')}", system=True)
        elif kind == "announce":
            self._print(f"* announcement: {get('text')}")

    def _status(self, status: Status) -> None:
        if status.state == State.RECONNECTING:
            detail = f" ({one_line(status.detail)})" if status.detail else ""
            line = f"* disconnected{detail}, reconnecting in {status.retry_in:.1f}s"
            print(line, file=self.err, flush=True)

    # -- input ------------------------------------------------------------------------------------

    async def _read_input(self, stdin: TextIO) -> None:
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
        except CommandError as error:
            self._note(f"chat-tui: {error}")
            return False
        if command.name == "quit":
            return True
        if command.name == "nick":
            problem = name_error(command.arg)
            if problem:
                self._note(f"chat-tui: {problem}")
            elif command.arg == self.identity.name:
                self._note(f"chat-tui: you are already {one_line(command.arg)}")
            else:
                self.link.send({"type": "nick", "name": command.arg})
        elif command.name == "msg":
            to, text = command.split()
            self.link.send({"type": "dm", "to": to, "text": text})
        elif command.name in ("accept", "decline") and command.arg:
            self.link.send({"type": f"dm_{command.name}", "from": command.arg})
        elif command.name == "topic":
            self.link.send({"type": "topic", "text": command.arg})
        elif command.name == "who":
            self.link.send({"type": "who"})
        elif command.name == "help":
            for help_line in help_lines():
                print(help_line, file=self.err, flush=True)
        elif command.name == "rooms":
            try:
                for room in await list_rooms(self.config.http_base):
                    room_name, members = one_line(str(room.get("room"))), room.get("members")
                    self._print(f"* #{room_name} {one_line(str(members))}", True)
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
            if link_task in done:
                error = link_task.exception()
                message = str(error) if isinstance(error, LinkFailed) else repr(error)
                print(f"chat-tui: {one_line(message)}", file=self.err, flush=True)
                return EXIT_FAILED
            if done_task in done or self._complete_enough():
                return EXIT_OK
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
        while line := await reader.readline():
            yield line.decode("utf-8", errors="replace")
    finally:
        transport.close()
