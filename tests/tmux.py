"""The real `chat-tui` binary in a real terminal: a detached tmux session per client.

Pilot drives the app from inside; a user drives it through a terminal, whose byte sequences
(ESC-prefixed Alt, `ESC O P` for F1, ...) and sizes Pilot never sees. Each `Terminal` runs on
its own tmux server (`-L <unique name>`, `-f /dev/null`), so tests never touch the user's tmux
server or config, and its own temporary XDG config and state directories unless told to share
one. Screens are read with `capture-pane` and waited on with a bounded poll, never a sleep.
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

CHAT_TUI = Path(sys.executable).with_name("chat-tui")
WAIT = 20.0  # a client starting on a loaded 2-core CI machine can take several seconds
POLL = 0.05
_sockets = itertools.count(1)

# What terminals send for keys whose names tmux might translate differently per TERM.
ESC = "\x1b"
F1 = ESC + "OP"
F2 = ESC + "OQ"


def require_tmux() -> str:
    """tmux's path; a missing tmux skips the test, except under CI where it must be installed."""
    path = shutil.which("tmux")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tmux is not installed (.ci/run installs it)")
        pytest.skip("tmux is not installed")
    return path


class Terminal:
    """One detached tmux session of `width`x`height` running `command` in `home`'s XDG dirs."""

    def __init__(
        self,
        command: list[str],
        home: Path,
        *,
        width: int = 100,
        height: int = 30,
        env: dict[str, str] | None = None,
    ) -> None:
        self.tmux = require_tmux()
        self.socket = f"chat-test-{os.getpid()}-{next(_sockets)}"
        self.home = home
        (home / "config").mkdir(parents=True, exist_ok=True)
        (home / "state").mkdir(parents=True, exist_ok=True)
        variables = {
            "XDG_CONFIG_HOME": str(home / "config"),
            "XDG_STATE_HOME": str(home / "state"),
            "TERM": "tmux-256color",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            **(env or {}),
        }
        base = {k: v for k, v in os.environ.items() if k not in ("TMUX", "TMUX_PANE")}
        self._env = {**base, **variables}
        # The command's environment is spelled out too: a tmux server keeps the environment
        # of the client that started it, and `env` makes that independent of tmux's rules.
        shell = shlex.join(["env", *(f"{k}={v}" for k, v in variables.items()), *command])
        # One tmux command line: the options hold before the client starts. No status line (the
        # pane is the whole terminal); a client that crashed stays on screen with its traceback;
        # what the client copies (OSC 52) lands in a tmux buffer that `clipboard()` reads.
        self._tmux(
            "-f", "/dev/null", "start-server", ";",
            "set-option", "-g", "status", "off", ";",
            "set-option", "-s", "set-clipboard", "on", ";",
            "set-option", "-g", "remain-on-exit", "on", ";",
            "set-option", "-g", "default-terminal", "tmux-256color", ";",
            "new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), shell,
        )  # fmt: skip

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            [self.tmux, "-L", self.socket, *args],
            env=self._env,
            capture_output=True,
            text=True,
            timeout=WAIT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    # -- input -----------------------------------------------------------------------------------

    def keys(self, *names: str) -> None:
        """Keys by tmux name (`Enter`, `C-n`, `F1`, `M-1`), as tmux encodes them for the pane."""
        self._tmux("send-keys", "-t", "t", *names)

    def type(self, text: str) -> None:
        """Literal text, as if typed or pasted; no key names are interpreted."""
        self._tmux("send-keys", "-t", "t", "-l", text)

    def raw(self, data: str | bytes) -> None:
        """Exact bytes into the terminal, e.g. `ESC + "1"` (what a terminal sends for Alt+1)."""
        octets = data.encode() if isinstance(data, str) else data
        self._tmux("send-keys", "-t", "t", "-H", *(f"{b:02x}" for b in octets))

    def click(self, x: int, y: int, times: int = 1) -> None:
        """Left clicks at column `x`, row `y` (0-based), as SGR mouse reports (mode 1006)."""
        for _ in range(times):
            self.raw(f"{ESC}[<0;{x + 1};{y + 1}M{ESC}[<0;{x + 1};{y + 1}m")

    def line(self, text: str) -> None:
        self.type(text)
        self.keys("Enter")

    def resize(self, width: int, height: int) -> None:
        self._tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))

    # -- output ----------------------------------------------------------------------------------

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def lines(self) -> list[str]:
        return self.screen().splitlines()

    def clipboard(self) -> str:
        """What the client last copied to the terminal's clipboard; empty when nothing."""
        try:
            return self._tmux("show-buffer")
        except RuntimeError:
            return ""

    def exited(self) -> bool:
        return self._tmux("display-message", "-p", "-t", "t", "#{pane_dead}").strip() == "1"

    def wait(
        self, check: Callable[[str], bool], timeout: float = WAIT, what: str = "condition"
    ) -> str:
        """The screen once `check(screen)` holds; fails with the screen after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{screen}")
            time.sleep(POLL)

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        return self.wait(lambda screen: text in screen, timeout, repr(text))

    def wait_gone(self, text: str, timeout: float = WAIT) -> str:
        return self.wait(lambda screen: text not in screen, timeout, f"{text!r} to go")

    def close(self) -> None:
        subprocess.run(
            [self.tmux, "-L", self.socket, "kill-server"],
            env=self._env,
            capture_output=True,
            timeout=WAIT,
            check=False,
        )


class Terminals:
    """Opens `chat-tui` terminals for one test and kills every tmux server it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.opened: list[Terminal] = []

    def chat_tui(
        self,
        *args: str,
        width: int = 100,
        height: int = 30,
        home: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> Terminal:
        """`chat-tui ARGS...`; `home` shares XDG dirs between terminals (same machine user)."""
        home = home or self.root / f"home-{len(self.opened) + 1}"
        terminal = Terminal([str(CHAT_TUI), *args], home, width=width, height=height, env=env)
        self.opened.append(terminal)
        return terminal

    def close(self) -> None:
        for terminal in self.opened:
            terminal.close()


def terminals_for(root: Path) -> Iterator[Terminals]:
    """The body of a fixture: yields a `Terminals` and closes it however the test ends."""
    require_tmux()
    terminals = Terminals(root)
    try:
        yield terminals
    finally:
        terminals.close()
