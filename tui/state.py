"""What the client remembers between runs: its identity token per server and typed input."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO


def _write_private(path: Path, text: str) -> None:
    """Created 0600 from the start: the token must never be readable by others, even briefly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with contextlib.suppress(FileNotFoundError):
        temporary.unlink()
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as file:
        file.write(text)
    temporary.replace(path)


class TokenStore:
    """Tokens keyed by server URL: a token is only meaningful to the relay that signed it.

    A state directory that cannot be written (full disk, read-only) must not cost the
    connection: the token is then kept for this run only.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._memory: dict[str, str] = {}

    def _all(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def get(self, server: str) -> str | None:
        return self._memory.get(server) or self._all().get(server)

    def put(self, server: str, token: str) -> None:
        tokens = self._all()
        self._memory[server] = token
        if tokens.get(server) != token:
            tokens[server] = token
            with contextlib.suppress(OSError):
                _write_private(self.path, json.dumps(tokens, indent=1))


class InputHistory:
    """Lines the user sent, oldest first, walked with Up/Down like a shell history.

    Saving is best effort: a line typed while the disk is full is still sent and recalled.
    """

    def __init__(self, path: Path | None, limit: int = 1000) -> None:
        self.path = path
        self.limit = limit
        self.lines: list[str] = []
        if path is not None:
            try:
                self.lines = path.read_text(encoding="utf-8").splitlines()[-limit:]
            except (OSError, UnicodeDecodeError):
                self.lines = []
        self._index = len(self.lines)
        self._draft = ""

    def add(self, line: str) -> None:
        if line.strip() and (not self.lines or self.lines[-1] != line) and "\n" not in line:
            self.lines.append(line)
            if len(self.lines) > self.limit:
                del self.lines[: len(self.lines) - self.limit]
            self._save()
        self._index = len(self.lines)
        self._draft = ""

    def _save(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                _write_private(self.path, "\n".join(self.lines) + "\n")

    def previous(self, current: str) -> str | None:
        """The line before the cursor; the text being typed is kept to come back to."""
        if self._index == 0:
            return None
        if self._index == len(self.lines):
            self._draft = current
        self._index -= 1
        return self.lines[self._index]

    def next(self) -> str | None:
        if self._index >= len(self.lines):
            return None
        self._index += 1
        return self._draft if self._index == len(self.lines) else self.lines[self._index]


class ProfileLock:
    """Held for as long as a client runs, so a second client on the same profile can tell the
    user that both are one identity instead of silently sharing it.

    Best effort: where the lock cannot be taken or checked (no `fcntl`, unwritable directory),
    the profile counts as free.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def acquire(self) -> bool:
        """False when another running client holds this profile."""
        try:
            import fcntl
        except ImportError:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            file = self.path.open("a", encoding="utf-8")
        except OSError:
            return True
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        except OSError:
            file.close()
            return True
        self._file = file
        return True
