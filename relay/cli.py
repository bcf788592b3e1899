"""`chat-relay serve`: flags (each also a CHAT_RELAY_* variable), uvicorn, graceful shutdown."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
from importlib.metadata import version
from pathlib import Path

import uvicorn

from relay.app import create_app, drain
from relay.core import Hub, Limits
from relay.sqlite_store import SQLiteStore
from relay.store import MemoryStore, Store
from relay.tokens import TokenSigner, load_secret
from shared.xdg import state_home

DRAIN_SECONDS = 5.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chat-relay", description="WebSocket chat relay")
    parser.add_argument("--version", action="version", version=version("terminal-chat"))
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the relay",
        description="Every option can also be set with CHAT_RELAY_<OPTION> (e.g. CHAT_RELAY_PORT).",
    )
    defaults = Limits()
    options: list[tuple[str, type, object, str]] = [
        ("host", str, "127.0.0.1", "address to listen on"),
        ("port", int, 8000, "port to listen on (0 picks a free one)"),
        ("history", int, defaults.history, "messages kept per room"),
        ("backlog", int, defaults.backlog, "messages replayed on join by default"),
        ("max-message-bytes", int, defaults.max_message_bytes, "largest message text"),
        ("max-frame-bytes", int, defaults.max_frame_bytes, "hard cap per frame (close 1009)"),
        ("rate", float, defaults.rate, "messages per second per connection (0: unlimited)"),
        ("burst", int, defaults.burst, "messages a connection may send at once"),
        ("send-queue-bytes", int, defaults.send_queue_bytes, "per-connection queue budget"),
        ("secret", str, None, "token signing secret (default: generated, kept in state dir)"),
        ("state-dir", Path, state_home("chat-relay"), "where the relay keeps its state"),
        ("db", str, None, "SQLite database (default: STATE_DIR/chat.db; :memory: keeps none)"),
        ("retain-messages", int, 0, "messages the database keeps per room (0: no cap)"),
        ("retain-days", float, 0.0, "days the database keeps a message (0: no limit)"),
        ("db-max-bytes", int, 0, "database size cap, then as on a full disk (0: no cap)"),
        (
            "forget-identities-days",
            float,
            30.0,
            "forget unnamed idle identities (0: never)",
        ),
        ("log-level", str, "info", "critical, error, warning, info or debug"),
        ("ws", str, "websockets-sansio", "uvicorn WebSocket implementation"),
    ]
    for flag, kind, default, help_text in options:
        env = "CHAT_RELAY_" + flag.upper().replace("-", "_")
        value = os.environ.get(env, default)
        serve.add_argument(f"--{flag}", type=kind, default=value, help=f"{help_text} [{env}]")
    return parser


class RelayServer(uvicorn.Server):
    """uvicorn, but on shutdown our sockets close with 1001 after flushing, not 1012 at once."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                print(f"chat relay on ws://{host}:{port}/chat/{{room}}", flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await drain(self.hub, DRAIN_SECONDS)
        await super().shutdown(sockets)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    limits = Limits(
        max_message_bytes=args.max_message_bytes,
        rate=args.rate,
        burst=args.burst,
        history=args.history,
        backlog=args.backlog,
        max_frame_bytes=args.max_frame_bytes,
        send_queue_bytes=args.send_queue_bytes,
    )
    try:
        signer = TokenSigner(load_secret(args.secret, args.state_dir))
    except OSError as exc:
        raise SystemExit(f"chat-relay: cannot use the state dir {args.state_dir}: {exc}") from None
    try:
        store = _store(args, limits.history)
    except (OSError, sqlite3.Error) as exc:
        raise SystemExit(f"chat-relay: cannot write the database: {exc}") from None
    hub = Hub(store, signer, limits)
    config = uvicorn.Config(
        create_app(hub),
        host=args.host,
        port=args.port,
        ws=args.ws,
        ws_max_size=limits.max_frame_bytes,
        ws_per_message_deflate=False,
        lifespan="off",
        log_level=args.log_level,
        access_log=False,
        backlog=4096,
    )
    # uvicorn re-raises the stop signal after its graceful shutdown; with these handlers in
    # place that is a no-op, so a SIGTERM'd relay exits 0 after closing every socket.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        RelayServer(config, hub).run()
    finally:
        store.close()


def _store(args: argparse.Namespace, history: int) -> Store:
    if args.db == ":memory:":
        return MemoryStore(history, forget_days=args.forget_identities_days)
    path = Path(args.db) if args.db else args.state_dir / "chat.db"
    return SQLiteStore(
        path,
        history,
        args.retain_messages,
        args.retain_days,
        max_bytes=args.db_max_bytes,
        forget_days=args.forget_identities_days,
    )
