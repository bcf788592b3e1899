"""The full-screen client: owns the settings, identity and input history the screens share."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from textual import events
from textual._ansi_sequences import ANSI_SEQUENCES_KEYS
from textual.app import App
from textual.binding import Binding

from tui.client.link import Identity
from tui.clock import Clock
from tui.config import Config, state_dir
from tui.screens.chat import ChatScreen
from tui.screens.help import HelpScreen
from tui.state import InputHistory, ProfileLock, TokenStore
from tui.widgets.chat_input import ChatInput

NARROW_BELOW = 70


def let_alt_digits_through() -> None:
    """Make ESC+digit arrive as Alt+digit, which is what terminals mean by it.

    tmux, screen, GNOME Terminal, xterm with metaSendsEscape and macOS terminals with Option as
    Meta send ESC+digit for Alt+digit. Textual 8 turns those bytes into the characters macOS
    types for Option+digit (`¡`, `™`, `£`...), a WezTerm accommodation that leaves Alt+1..9
    unbindable everywhere else and types stray symbols instead. Typing `¡` itself (its own
    UTF-8 bytes) is unaffected.
    """
    table = cast("dict[str, object]", ANSI_SEQUENCES_KEYS)
    for digit in "0123456789":
        table.pop(f"\x1b{digit}", None)


class ChatApp(App[None]):
    TITLE = "chat"
    CSS_PATH = "chat.tcss"
    ENABLE_COMMAND_PALETTE = False
    # Below NARROW_BELOW columns the sidebar would take half the width: hidden until asked for.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (NARROW_BELOW, "-wide")]  # noqa: RUF012
    BINDINGS = [  # noqa: RUF012
        Binding("ctrl+t,f2", "toggle_members", "Members", id="toggle_members"),
        Binding("f1", "help", "Help", id="help"),
        Binding("ctrl+q", "quit", "Quit", id="quit", priority=True),
    ]

    def __init__(
        self,
        config: Config,
        rooms: list[str],
        *,
        name: str | None = None,
        token: str | None = None,
        clock: Clock | None = None,
        remember: bool = True,
        state: Path | None = None,
    ) -> None:
        """`remember=False` keeps token and input history in memory only (tests, guests);
        `state` is the profile's directory (tui.config.state_dir)."""
        super().__init__()
        let_alt_digits_through()
        self.config = config
        self.rooms = rooms
        self.wanted_name = name
        self.clock = clock or Clock()
        directory = state or state_dir()
        self.profile_lock = ProfileLock(directory / "lock")
        self.profile_shared = remember and not self.profile_lock.acquire()
        self.tokens = TokenStore(directory / "identity.json") if remember else None
        stored = self.tokens.get(config.server) if self.tokens else None
        self.identity = Identity(token or stored, self._store_token)
        self.input_history = InputHistory(directory / "input_history" if remember else None)
        if config.theme:
            self.theme = config.theme
        if config.keymap:
            self.set_keymap(config.keymap)

    def on_mount(self) -> None:
        if self.profile_shared:
            self.notify(
                "Another chat-tui is running with this profile: both are the same user. "
                "Start with --profile NAME to be someone else.",
                title="Profile in use",
                severity="warning",
                timeout=15,
            )

    def on_key(self, event: events.Key) -> None:
        """Typing while the log has focus (clicked to copy) goes to the input, not nowhere."""
        screen = self.screen
        if isinstance(screen, ChatScreen) and event.is_printable and event.character:
            chat_input = screen.query_one(ChatInput)
            if self.focused is not chat_input:
                chat_input.focus()
                chat_input.insert_text_at_cursor(event.character)
                event.stop()

    def _store_token(self, token: str) -> None:
        if self.tokens is not None:
            self.tokens.put(self.config.server, token)

    def get_default_screen(self) -> ChatScreen:
        return ChatScreen()

    async def action_quit(self) -> None:
        """Ctrl+Q and /quit: lines still waiting to be sent are not dropped without a word."""
        chat = self.screen_stack[0] if self.screen_stack else None
        if isinstance(chat, ChatScreen):
            chat.confirm_quit()
        else:
            self.exit()

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_toggle_members(self) -> None:
        """Shows the sidebar in a narrow terminal, hides it in a wide one."""
        if isinstance(self.screen, ChatScreen):
            self.screen.toggle_class("-members-toggled")
