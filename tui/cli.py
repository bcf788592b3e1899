"""`chat-tui`: the full-screen client, its `--plain` mode, and the `rooms`/`send` one-shots.

Exit codes: 0 success, 1 connection or relay error, 2 bad usage or config, 3 timed out.
Failures print one line on stderr, never a traceback.

Each command imports what it needs when it runs: scripts call `send` once per message, and
Textual, asyncio and websockets would cost them several times the request itself
(bench/startup.py; tests/test_tui_term.py keeps them out of `import tui.cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from shared.protocol import room_error
from shared.sanitize import one_line
from tui import access
from tui.client.server import ServerError, server_url
from tui.config import Config, ConfigError, profile_error, state_dir

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _common() -> argparse.ArgumentParser:
    """Options taken before or after the subcommand (SUPPRESS: one never hides the other)."""
    common = argparse.ArgumentParser(add_help=False)
    add = common.add_argument
    add(
        "--server",
        default=argparse.SUPPRESS,
        help="relay address: ws://, wss://, http://, https:// URL or host:port",
    )
    add("--config", type=Path, default=argparse.SUPPRESS, help="config file (TOML)")
    add("--plain", action="store_true", default=argparse.SUPPRESS, help="headless line mode")
    add(
        "--profile",
        default=argparse.SUPPRESS,
        help="keep identity and history apart under this name (another user on this machine)",
    )
    add("--key", default=argparse.SUPPRESS, help="the relay's access key [CHAT_TUI_KEY]")
    add("--ca-file", default=argparse.SUPPRESS, help="CA certificates (PEM) for wss://")
    return common


def _parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="chat-tui", description="Terminal chat client", parents=[common]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    connect = commands.add_parser("connect", parents=[common], help="join rooms")
    connect.add_argument("rooms", nargs="+", metavar="ROOM")
    connect.add_argument("--name", help="the name to use (a /nick after joining)")
    connect.add_argument("--json", action="store_true", help="--plain: print raw JSON events")
    connect.add_argument("--events", action="store_true", help="--plain: system events on stdout")
    connect.add_argument("--count", type=int, help="--plain: exit after N messages received")
    connect.add_argument("--timeout", type=float, help="--plain: give up after S seconds")
    connect.add_argument("--backlog", type=int, default=0, help="--plain: replay N old messages")
    commands.add_parser("rooms", parents=[common], help="list active rooms")
    send = commands.add_parser("send", parents=[common], help="post one message over HTTP")
    send.add_argument("room", metavar="ROOM")
    send.add_argument("text", metavar="TEXT")
    send.add_argument("--from", dest="sender", default="chat-tui", help="sender name")
    log_in = commands.add_parser(
        "login", parents=[common], help="become a registered user on this device"
    )
    log_in.add_argument("name", metavar="NAME")
    sign_up = commands.add_parser(
        "register",
        parents=[common],
        help="claim your name (or NAME, as a new user) with a password",
    )
    sign_up.add_argument("--name", help="register a new identity with this name")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = Config.load(getattr(args, "config", None))
    except ConfigError as error:
        _fail(f"config: {error}", EXIT_USAGE)
    if getattr(args, "server", None):
        config.server = args.server
    try:
        config.server = server_url(config.server)
    except ServerError as error:
        _fail(f"server address {error}", EXIT_USAGE)
    profile = getattr(args, "profile", None)
    if profile is not None and (problem := profile_error(profile)):
        _fail(f"--profile {profile!r}: {problem}", EXIT_USAGE)
    config.key = getattr(args, "key", None) or os.environ.get("CHAT_TUI_KEY") or config.key
    config.ca_file = getattr(args, "ca_file", None) or config.ca_file
    access.configure(access.ClientAccess(config.key, config.ca_file))
    if args.command == "rooms":
        sys.exit(_rooms(config))
    if args.command == "send":
        sys.exit(_send(config, args.room, args.sender, args.text))
    if args.command in ("login", "register"):
        sys.exit(_account(config, args, state_dir(profile)))
    for room in args.rooms:
        problem = room_error(room)
        if problem:
            _fail(f"{room!r}: {problem}", EXIT_USAGE)
    if getattr(args, "plain", False):
        sys.exit(_plain(config, args, state_dir(profile)))
    from tui.app import ChatApp

    rooms = list(dict.fromkeys(args.rooms))
    ChatApp(config, rooms, name=args.name, state=state_dir(profile)).run()


def _plain(config: Config, args: argparse.Namespace, state: Path) -> int:
    if len(args.rooms) != 1:
        _fail("--plain connects to exactly one room", EXIT_USAGE)
    import asyncio

    from tui.client.link import Identity
    from tui.plain import PlainOptions, PlainSession
    from tui.state import TokenStore

    options = PlainOptions(
        room=args.rooms[0],
        name=args.name,
        json=args.json,
        events=args.events,
        count=args.count,
        timeout=args.timeout,
        backlog=args.backlog,
    )
    tokens = TokenStore(state / "identity.json")

    async def run() -> int:
        identity = Identity(tokens.get(config.server), lambda t: tokens.put(config.server, t))
        return await PlainSession(config, options, identity).run(sys.stdin)

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 130


def _rooms(config: Config) -> int:
    from tui.http_api import ApiError, rooms_now

    try:
        rooms = rooms_now(config.http_base)
    except ApiError as error:
        _fail(str(error), EXIT_FAILED)
    for room in rooms:
        print(f"{one_line(str(room.get('room')))}\t{one_line(str(room.get('members')))}")
    return EXIT_OK


def _send(config: Config, room: str, sender: str, text: str) -> int:
    from tui.http_api import ApiError, post_now

    try:
        message = post_now(config.http_base, room, sender, text)
    except ApiError as error:
        _fail(str(error), EXIT_FAILED)
    print(f"sent #{one_line(room)} seq {one_line(str(message.get('seq')))}")
    return EXIT_OK


def _account(config: Config, args: argparse.Namespace, state: Path) -> int:
    """`login`/`register`: the password from the terminal (not echoed) or one line of stdin."""
    import getpass

    from tui.http_api import ApiError, login_now, register_now
    from tui.state import TokenStore

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    tokens = TokenStore(state / "identity.json")
    try:
        if args.command == "login":
            answer = login_now(config.http_base, args.name, password)
        else:
            token = None if args.name else tokens.get(config.server)
            if token is None and not args.name:
                _fail("no identity yet: connect once, or give --name NAME", EXIT_USAGE)
            answer = register_now(config.http_base, password, token, args.name)
    except ApiError as error:
        _fail(str(error), EXIT_FAILED)
    token, name = answer.get("token"), answer.get("name")
    if not isinstance(token, str):
        _fail("the relay sent no token", EXIT_FAILED)
    tokens.put(config.server, token)
    verb = "logged in" if args.command == "login" else "registered"
    print(f"{verb} as {one_line(str(name))}; token saved in {tokens.path}")
    return EXIT_OK


def _fail(message: str, code: int) -> NoReturn:
    print(f"chat-tui: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)
