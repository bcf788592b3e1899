"""Slash commands, parsed the same way by the full-screen app and by `--plain`.

`parse` turns a line into a `Command`; `Command.request` turns the commands that are plain relay
requests into the request to send, so both front ends send exactly the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.protocol import Event, name_error

# name -> (argument synopsis, help text, needs an argument)
COMMANDS: dict[str, tuple[str, str, bool]] = {
    "join": ("ROOM", "open a tab for ROOM", True),
    "part": ("", "leave the current room and close its tab", False),
    "nick": ("NAME", "change your name in every room", True),
    "msg": ("NAME TEXT", "send a direct message (opens a DM tab)", True),
    "accept": ("[NAME]", "accept NAME's request to send you private messages", False),
    "decline": ("[NAME]", "decline NAME's request to send you private messages", False),
    "topic": ("TEXT", "set the room topic (room owner only)", True),
    "kick": ("NAME", "remove NAME from the room (room owner only)", True),
    "close": ("", "close the room for everyone in it (room owner only)", False),
    "private": ("on|off", "make the room invite-only, or open it (owner only)", True),
    "invite": ("NAME", "let NAME into the invite-only room (owner only)", True),
    "remove": ("NAME", "take NAME out of the invite-only room (owner only)", True),
    "owner": ("NAME", "hand the room over to NAME (owner only)", True),
    "register": ("", "claim your name with a password (never typed on the chat line)", False),
    "logout-everywhere": ("", "revoke your tokens on every device (registered names)", False),
    "who": ("", "list the members of the current room", False),
    "rooms": ("", "list the relay's active rooms", False),
    "clear": ("", "clear the current tab's log", False),
    "help": ("", "show keys and commands", False),
    "quit": ("", "leave every room and exit", False),
}


# /register asks for the password in a masked dialog (full-screen) or points to the command that
# reads it without echo (--plain): never on the chat line, where it is echoed and kept in history.
REGISTER_HINT = "run `chat-tui register` in a shell: it reads the password without echo"


class CommandError(Exception):
    """A line that looks like a command but is not a valid one; shown locally, never sent."""


@dataclass(frozen=True)
class Command:
    name: str
    arg: str = ""

    def split(self) -> tuple[str, str]:
        """`/msg NAME TEXT` style: first word and the rest."""
        head, _, rest = self.arg.partition(" ")
        return head, rest.strip()

    def request(self, peer: str | None = None, me: str | None = None) -> Event | None:
        """The relay request this command sends, or None for a command the client runs itself.

        `peer` is the other user of the DM tab it was typed in (for a bare /accept), `me` the
        current name (a /nick to it would be answered by nothing). Raises CommandError for a
        request the relay would refuse anyway.
        """
        name, arg = self.name, self.arg
        if name == "nick":
            problem = name_error(arg)
            if problem:
                raise CommandError(problem)
            if arg == me:
                raise CommandError(f"you are already {arg}")
            return {"type": "nick", "name": arg}
        if name == "msg":
            to, text = self.split()
            return {"type": "dm", "to": to, "text": text}
        if name in ("accept", "decline"):
            who = arg or peer
            if not who:
                raise CommandError(f"usage: /{name} NAME (or use it in the DM tab)")
            return {"type": f"dm_{name}", "from": who}
        if name == "topic":
            return {"type": "topic", "text": arg}
        if name == "private":
            if arg not in ("on", "off"):
                raise CommandError("usage: /private on|off")
            return {"type": "private", "private": arg == "on"}
        if name in ("kick", "invite", "remove", "owner"):
            return {"type": name, "name": arg}
        if name == "logout-everywhere":
            return {"type": "logout_everywhere"}
        if name in ("who", "close"):
            return {"type": name}
        return None


def is_command(line: str) -> bool:
    """`//text` sends `/text` literally, the IRC convention for a message starting with '/'."""
    return line.startswith("/") and not line.startswith("//")


def literal(line: str) -> str:
    return line[1:] if line.startswith("//") else line


def parse(line: str) -> Command:
    name, _, arg = line[1:].partition(" ")
    name, arg = name.lower(), arg.strip()
    spec = COMMANDS.get(name)
    if spec is None:
        raise CommandError(f"unknown command /{name} (try /help)")
    synopsis, _, needs_arg = spec
    if needs_arg and not arg:
        raise CommandError(f"usage: /{name} {synopsis}")
    command = Command(name, arg)
    if name == "msg" and not command.split()[1]:
        raise CommandError(f"usage: /msg {synopsis}")
    return command


def help_lines() -> list[str]:
    return [f"/{name} {syn}".ljust(16) + text for name, (syn, text, _) in COMMANDS.items()]
