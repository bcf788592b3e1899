"""End-to-end: the real `chat-tui` binary in tmux against a real relay (tests/tmux.py)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.relayproc import RelayProcess
from tests.tmux import ESC, F1, Terminal, Terminals


@pytest.fixture
def relay(relay_factory) -> RelayProcess:
    """A relay per test: every test here is alice and bob, and a name stays its last identity's
    for a while after it leaves (the relay's name grace), so a shared relay would refuse it."""
    return relay_factory("--rate", "0")


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


def test_alt_digits_and_ctrl_keys_switch_tabs_without_typing(
    relay: RelayProcess, terminals: Terminals, room: str
) -> None:
    """The bytes a terminal sends: ESC+digit for Alt+digit, ESC+a for Alt+A, 0x0e for Ctrl+N."""
    rooms = [f"{room}a", f"{room}b", f"{room}c"]
    alice = terminals.chat_tui("--server", server(relay), "connect", *rooms, "--name", "alice")
    alice.wait_for(f"you joined #{rooms[0]}")
    alice.wait_for("● connected")
    alice.raw(ESC + "2")
    alice.wait_for(f"you joined #{rooms[1]}")
    alice.keys("M-3")
    alice.wait_for(f"you joined #{rooms[2]}")
    alice.raw("\x0e")  # Ctrl+N wraps around to the first tab
    alice.wait_for(f"you joined #{rooms[0]}")
    alice.keys("C-p")
    alice.wait_for(f"you joined #{rooms[2]}")
    alice.raw(ESC + "1")
    alice.wait_for(f"you joined #{rooms[0]}")
    bob = terminals.chat_tui("--server", server(relay), "connect", rooms[1], "--name", "bob")
    bob.wait_for("alice")
    bob.line("alice: look here")
    alice.wait_for(f"#{rooms[1]} 1 @")
    alice.raw(ESC + "a")
    alice.wait_for("bob alice: look here")
    alice.raw("\x07")  # Ctrl+G: no other mention, stays
    alice.line("after the keys")
    screen = bob.wait_for("alice after the keys")
    assert "¡" not in screen and "™" not in screen
    assert "aafter" not in screen and "aalice" not in screen


def test_f1_shows_the_help_text(relay: RelayProcess, terminals: Terminals, room: str) -> None:
    alice = terminals.chat_tui("--server", server(relay), "connect", room)
    alice.wait_for("● connected")
    alice.raw(F1)
    alice.wait_for("Ctrl+Q")
    alice.keys("Escape")
    alice.wait_gone("Ctrl+Q")
    alice.line("/help")
    alice.wait_for("next tab with an unread mention")


def test_double_click_and_ctrl_c_copy_from_the_log(
    relay: RelayProcess, terminals: Terminals, room: str
) -> None:
    alice = terminals.chat_tui("--server", server(relay), "connect", room, "--name", "alice")
    alice.wait_for("● connected")
    alice.line("copy this wombat")
    screen = alice.wait_for("alice copy this wombat").splitlines()
    row = next(i for i, line in enumerate(screen) if "copy this wombat" in line)
    for _ in range(5):  # a loaded machine may see two slow clicks as two single clicks
        alice.click(10, row, times=2)
        alice.keys("C-c")
        try:
            alice.wait(lambda _: "copy this wombat" in alice.clipboard(), 4, "the copied log")
            break
        except AssertionError:
            assert not alice.exited(), alice.screen()
    assert "copy this wombat" in alice.clipboard()
    assert "alice copy this wombat" in alice.screen(), "the selected text must stay visible"
    alice.click(10, next(i for i, line in enumerate(alice.lines()) if "Message, or" in line))
    alice.line("still here")
    alice.wait_for("alice still here")
    assert not alice.exited()


def post(relay: RelayProcess, room: str, sender: str, texts: list[str]) -> None:
    with httpx.Client() as http:
        for text in texts:
            url = f"{relay.http}/rooms/{room}/messages"
            http.post(url, json={"from": sender, "text": text}).raise_for_status()


def test_joins_and_pastes_end_at_the_newest_line(
    relay: RelayProcess, terminals: Terminals, room: str
) -> None:
    """The view followed the end only about half the time once a join's backlog overflowed it."""
    post(relay, room, "bob", [f"backlog {i}" for i in range(1, 41)])
    joins = [terminals.chat_tui("--server", server(relay), "connect", room) for _ in range(4)]
    for terminal in joins:
        terminal.wait_for("bob (via http) backlog 40")
        terminal.close()
    alice = terminals.chat_tui("--server", server(relay), "connect", room, "--name", "alice")
    alice.wait_for("is now known as alice")
    alice.raw(ESC + "[200~first pasted\rsecond pasted\rthird pasted" + ESC + "[201~")
    alice.wait_for("Send (y)")
    alice.type("y")
    alice.wait_for("alice third pasted")


def test_a_50x15_terminal_shows_the_input_and_the_active_tab(
    relay: RelayProcess, terminals: Terminals, room: str
) -> None:
    rooms = [f"{room}-{n}" for n in ("alpha", "beta", "gamma")]
    small = terminals.chat_tui(
        "--server", server(relay), "connect", *rooms, "--name", "alice", width=50, height=15
    )
    small.wait_for("● connected")
    small.raw(ESC + "3")
    screen = small.wait_for(f"you joined #{rooms[2]}")
    assert "Members" not in screen
    assert "Message, or /help" in screen
    tab_bar = screen.splitlines()[1]
    assert f"#{rooms[2]}" in tab_bar
    small.line("tiny but usable")
    small.wait_for("alice tiny but usable")
    small.keys("F2")
    small.wait_for("Members (1)")
    small.keys("C-t")
    small.wait_gone("Members (1)")
    small.resize(100, 30)
    small.wait_for("Members (1)")


def my_name(terminal: Terminal) -> str:
    screen = terminal.wait(lambda s: re.search(r"you are (\S+)", s) is not None, what="a name")
    found = re.search(r"you are (\S+)", screen)
    assert found is not None
    return found.group(1)


def test_profiles_keep_two_users_apart_on_one_machine(
    relay: RelayProcess, terminals: Terminals, room: str, tmp_path: Path
) -> None:
    """Same XDG dirs (one machine user): profiles are different users, no profile is shared."""
    home = tmp_path / "machine"
    args = ("--server", server(relay), "connect", room)
    work = terminals.chat_tui("--profile", "work", *args, home=home)
    play = terminals.chat_tui(*args, "--profile", "play", home=home)
    work.wait_for("● connected")
    play.wait_for("● connected")
    work_name, play_name = my_name(work), my_name(play)
    assert work_name != play_name
    play.wait_for(work_name)
    assert (home / "state" / "chat-tui" / "profiles" / "work" / "identity.json").exists()
    again = terminals.chat_tui("--profile", "work", *args, home=home)
    again.wait_for("Profile in use")
    assert my_name(again) == work_name
    assert "Profile in use" not in work.screen()
