"""End-to-end: the real `chat-tui` binary in tmux against a real relay (tests/tmux.py)."""

from __future__ import annotations

from tests.relayproc import RelayProcess
from tests.tmux import Terminals


def server(relay: RelayProcess) -> str:
    return f"ws://127.0.0.1:{relay.port}"


def test_a_message_typed_in_one_terminal_appears_in_the_other(
    relay: RelayProcess, terminals: Terminals, room: str
) -> None:
    alice = terminals.chat_tui("--server", server(relay), "connect", room, "--name", "alice")
    bob = terminals.chat_tui("--server", server(relay), "connect", room, "--name", "bob")
    alice.wait_for("● connected")
    bob.wait_for("● connected")
    alice.wait_for("bob")
    alice.line("hello from alice")
    bob.wait_for("alice hello from alice")
    bob.line("hi alice")
    alice.wait_for("bob hi alice")
