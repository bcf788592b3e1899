"""`/register`: claim the current name with a password typed into masked fields.

The password is typed here, never into the chat input: that line is echoed on screen and kept
in the input history (on disk). It lives only in these two fields and in the request until the
relay answers; it is never written to the log or to any file.
"""

from __future__ import annotations

from collections.abc import Callable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

# `send(password)` sends the request and returns its cid, or raises SendRefused.
Sender = Callable[[str], str]


class SendRefused(Exception):
    """The request could not be queued (no link at all); the reason is shown in the dialog."""


class RegisterScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape", "dismiss", "Cancel")]  # noqa: RUF012

    def __init__(self, name: str | None, send: Sender) -> None:
        super().__init__()
        self.user_name = name
        self.send = send
        # The cid of the request waiting for the relay's answer; None when nothing is pending.
        self.pending: str | None = None
        self.done = False
        # What the dialog says now (for the user's eyes, and for tests).
        self.status = ""

    def compose(self) -> ComposeResult:
        who = self.user_name or "your current name"
        with Vertical(id="register"):
            yield Static(f"Register {who} with a password (8 characters or more).", markup=False)
            yield Input(password=True, placeholder="password", id="register-password")
            yield Input(password=True, placeholder="password again", id="register-again")
            yield Static("", id="register-status", markup=False)
            with Horizontal():
                yield Button("Register", variant="primary", id="register-ok")
                yield Button("Cancel (Esc)", id="register-cancel")

    def on_mount(self) -> None:
        self.query_one("#register-password", Input).focus()

    def _say(self, text: str, error: bool = False) -> None:
        self.status = text
        status = self.query_one("#register-status", Static)
        status.update(text)
        status.set_class(error, "error")

    @on(Input.Submitted, "#register-password")
    def _next_field(self) -> None:
        self.query_one("#register-again", Input).focus()

    @on(Input.Submitted, "#register-again")
    @on(Button.Pressed, "#register-ok")
    def _submit(self) -> None:
        if self.done:
            self.dismiss()
            return
        if self.pending is not None:
            return
        first = self.query_one("#register-password", Input)
        again = self.query_one("#register-again", Input)
        if first.value != again.value:
            self._clear()
            self._say("the passwords differ: type them again", error=True)
            return
        try:
            self.pending = self.send(first.value)
        except SendRefused as refused:
            self._say(str(refused), error=True)
            return
        self._say("registering…")

    @on(Button.Pressed, "#register-cancel")
    def _cancel(self) -> None:
        self.dismiss()

    def _clear(self) -> None:
        for field in self.query(Input):
            field.value = ""
        self.query_one("#register-password", Input).focus()

    def registered(self, name: str) -> None:
        """The relay took it: the name is ours and the new token is already stored."""
        self.pending = None
        self.done = True
        self._clear()
        for field in self.query(Input):
            field.disabled = True
        self.query_one("#register-ok", Button).label = "Close"
        self.query_one("#register-ok", Button).focus()
        self._say(f"{name} is registered: `chat-tui login {name}` on another device.")

    def refused(self, detail: str) -> None:
        """The relay's error (bad_password, registered, name_taken …): try again or cancel."""
        self.pending = None
        self._clear()
        self._say(detail, error=True)
