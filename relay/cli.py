"""`chat-relay serve`: flags (each also a CHAT_RELAY_* variable), uvicorn, graceful shutdown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import socket
import sqlite3
import sys
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Literal

import uvicorn
from uvicorn.config import WS_PROTOCOLS
from uvicorn.importer import import_from_string

from relay import access, announce, demo, logs, workers
from relay.accounts import Registry, SQLiteRegistry
from relay.app import create_app, drain, watch_revocations
from relay.cluster import Backplane
from relay.core import NAME_GRACE, Hub, Limits
from relay.direct import write_path
from relay.names import key
from relay.store import MemoryStore, Store, StoreUnavailable
from relay.store.sqlite import SQLiteStore
from relay.tokens import TokenSigner, load_secret
from relay.webclient import how_to_connect
from shared.xdg import state_home

guarded: ModuleType | None
try:
    from relay import guard as guarded
except ImportError:  # a uvicorn without the protocol classes relay/guard.py extends
    guarded = None

# The whole shutdown, whatever clients do; the last CUT_SECONDS of it follow the hard cut.
DRAIN_SECONDS = 5.0
CUT_SECONDS = 1
BACKPLANE_STOP_SECONDS = 2.0
# Past the drain, how long the rest of a shutdown may take before the process just exits.
STUCK_SECONDS = 5.0
# Descriptors kept for what is not a client socket: listening sockets, the database, logs.
FD_RESERVE = 64
REDIS_MISSING = "chat-relay: --redis needs redis-py: pip install 'terminal-chat[redis]'"


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
        ("rate", float, defaults.rate, "messages per second per identity (0: unlimited)"),
        ("burst", int, defaults.burst, "messages an identity may send at once"),
        ("address-rate", float, None, "frames and posts per second per address (default 10x rate)"),
        ("address-burst", int, None, "burst per client address (default: 10x burst)"),
        ("send-queue-bytes", int, defaults.send_queue_bytes, "per-connection queue budget"),
        ("secret", str, None, "token signing secret (default: generated, kept in state dir)"),
        ("state-dir", Path, state_home("chat-relay"), "where the relay keeps its state"),
        ("db", str, None, "SQLite database (default: STATE_DIR/chat.db; :memory: keeps none)"),
        ("redis", str, None, "one of several relays on this Redis (docs/scaling.md)"),
        ("retain-messages", int, 0, "messages the database keeps per room (0: no cap)"),
        ("retain-days", float, 0.0, "days the database keeps a message (0: no limit)"),
        ("name-grace", float, NAME_GRACE, "seconds a name stays its offline identity's"),
        ("token-days", float, 90.0, "days a token stays valid unused (0: forever)"),
        ("jwt-secret", str, None, "accept HS256 JWT identity tokens signed with this secret"),
        ("jwt-public-key", Path, None, "accept RS256 JWT identity tokens (PEM public key file)"),
        ("db-max-bytes", int, 0, "database size cap, then as on a full disk (0: no cap)"),
        (
            "forget-identities-days",
            float,
            30.0,
            "forget unnamed idle identities (0: never)",
        ),
        ("max-connections", int, 0, "open sockets at most (0: what the fd limit allows)"),
        ("max-connections-per-address", int, 256, "open sockets per client address (0: no cap)"),
        ("handshake-timeout", float, 10.0, "seconds a request or handshake may take to arrive"),
        ("ws-ping-interval", float, 20.0, "seconds between keepalive pings (0: none)"),
        ("ws-ping-timeout", float, 20.0, "seconds to wait for a pong before closing 1011"),
        ("log-level", str, "info", "critical, error, warning, info or debug"),
        ("ws", str, "websockets-sansio", "uvicorn WebSocket implementation"),
        ("node-ttl", float, 10.0, "seconds a silent node's members stay listed (with --redis)"),
        ("workers", int, 1, "relay processes on this port, one per core (needs --redis)"),
    ]
    for flag, kind, default, help_text in options:
        env = "CHAT_RELAY_" + flag.upper().replace("-", "_")
        value = os.environ.get(env, default)
        serve.add_argument(f"--{flag}", type=kind, default=value, help=f"{help_text} [{env}]")
    access.add_arguments(serve)
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    tokens = commands.add_parser("tokens", help="manage identity tokens")
    revoke = tokens.add_subparsers(dest="action", required=True).add_parser(
        "revoke", help="refuse every token issued so far to NAME (it must log in again)"
    )
    revoke.add_argument("name", metavar="NAME")
    state_env = os.environ.get("CHAT_RELAY_STATE_DIR", state_home("chat-relay"))
    revoke.add_argument("--state-dir", type=Path, default=state_env, help="[CHAT_RELAY_STATE_DIR]")
    revoke.add_argument("--db", default=os.environ.get("CHAT_RELAY_DB"), help="[CHAT_RELAY_DB]")
    revoke.add_argument(
        "--redis",
        default=os.environ.get("CHAT_RELAY_REDIS"),
        help="revoke on every relay of this Redis [CHAT_RELAY_REDIS]",
    )
    announce.add_parser(commands)
    demo.add_parser(commands)
    return parser


class RelayServer(uvicorn.Server):
    """uvicorn, but on shutdown our sockets close with 1001 after flushing, not 1012 at once."""

    def __init__(self, config: uvicorn.Config, hub: Hub) -> None:
        super().__init__(config)
        self.hub = hub
        self.revocations: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.revocations = asyncio.create_task(watch_revocations(self.hub))
        self.hub.backplane.start(self.hub)
        addresses: list[tuple[str, int]] = []
        for server in self.servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                addresses.append((host, port))
                scheme = "wss" if self.config.is_ssl else "ws"
                print(f"chat relay on {scheme}://{host}:{port}/chat/{{room}}", flush=True)
        if addresses:
            print("\n".join(how_to_connect(*addresses[0])), flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_SECONDS
        # A stop that hangs is a bug, but the operator's SIGTERM must still end the process:
        # say what was stuck, then go. Left armed after this method: the loop also has to
        # finish its remaining tasks; once it has closed, the timer is gone with it.
        loop.call_later(DRAIN_SECONDS + STUCK_SECONDS, _stuck)
        await self._shutdown(sockets, deadline)

    async def _shutdown(self, sockets: list[socket.socket] | None, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self.revocations is not None:
            self.revocations.cancel()
        for server in self.servers:
            server.close()
        await drain(self.hub, DRAIN_SECONDS - CUT_SECONDS)
        # A peer that stopped reading holds its transport open (queued frames, close frame
        # behind them) for as long as it likes: past the drain, cut whatever is left.
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
        self.config.timeout_graceful_shutdown = max(1, int(deadline - loop.time()))
        await super().shutdown(sockets)
        # Once every connection has left its rooms: leaving the other nodes is a courtesy
        # (they sweep a silent node anyway), so it is bounded.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hub.backplane.stop(), BACKPLANE_STOP_SECONDS)


def _stuck() -> None:
    print("chat-relay: shutdown is stuck; exiting. Tasks still running:", file=sys.stderr)
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if getattr(args, "redis", None):
        _require_redis()
    if args.command == "tokens":
        sys.exit(_revoke(args))
    if args.command == "announce":
        raise SystemExit(announce.run(args))
    if args.command == "demo":
        raise SystemExit(demo.run(args))
    if args.workers > 1:
        if not args.redis:
            raise SystemExit("chat-relay: --workers needs --redis (the workers share state there)")
        raise SystemExit(workers.supervise(argv, args.host, args.port, args.workers))
    limits = Limits(
        max_message_bytes=args.max_message_bytes,
        rate=args.rate,
        burst=args.burst,
        history=args.history,
        backlog=args.backlog,
        max_frame_bytes=args.max_frame_bytes,
        send_queue_bytes=args.send_queue_bytes,
        address_rate=args.address_rate,
        address_burst=args.address_burst,
    )
    try:
        secret = _secret(args)
    except OSError as exc:
        raise SystemExit(f"chat-relay: cannot use the state dir {args.state_dir}: {exc}") from None
    signer = TokenSigner(secret)
    if args.jwt_secret or args.jwt_public_key:
        # PyJWT (and cryptography) only for a relay that accepts JWTs: a shorter start.
        from relay.jwt_tokens import jwt_signer

        signer = jwt_signer(secret, args.jwt_secret, args.jwt_public_key)
    backplane = None
    if args.redis:
        store, backplane = _cluster(args, limits.history)
    else:
        try:
            store = _store(args, limits.history)
        except (OSError, sqlite3.Error) as exc:
            raise SystemExit(f"chat-relay: cannot write the database: {exc}") from None
    hub = Hub(
        store,
        signer,
        limits,
        name_grace=args.name_grace,
        registry=_registry(args),
        token_ttl=args.token_days * 86400,
        backplane=backplane,
    )
    ws_protocol = import_from_string(WS_PROTOCOLS.get(args.ws, args.ws))
    # uvicorn's trace level wraps every `send` in a logger, hiding the protocol behind it.
    hub.metrics.write_path = write_path(ws_protocol, send_wrapped=args.log_level == "trace")
    print(f"write path: {hub.metrics.write_path}", flush=True)
    http_protocol: type[asyncio.Protocol] | Literal["httptools"] = "httptools"
    capacity = _capacity(args.max_connections)
    if guarded is None:
        print("connection guard off: uvicorn's protocol classes were not found", flush=True)
    else:
        guard = guarded.Guard(
            hub.metrics,
            max_connections=capacity,
            max_per_address=args.max_connections_per_address,
            handshake_timeout=args.handshake_timeout,
            max_body_bytes=limits.max_frame_bytes,
            control_budget=limits.send_queue_bytes,
        )
        http_protocol, ws_protocol = guarded.protocols(guard, ws_protocol)
    config = uvicorn.Config(
        access.AccessMiddleware(create_app(hub, args.key), access.policy_from(args)),
        host=args.host,
        port=args.port,
        http=http_protocol,
        ws=ws_protocol,
        ws_max_size=limits.max_frame_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=args.ws_ping_interval or None,
        ws_ping_timeout=args.ws_ping_timeout or None,
        lifespan="off",
        log_level=args.log_level,
        access_log=False,
        backlog=4096,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    logs.install()
    # uvicorn re-raises the stop signal after its graceful shutdown; with these handlers in
    # place that is a no-op, so a SIGTERM'd relay exits 0 after closing every socket.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    sockets = None
    if args.reuse_port:
        sockets = [workers.listening_socket(args.host, args.port)]
    try:
        RelayServer(config, hub).run(sockets=sockets)
    finally:
        store.close()


def _revoke(args: argparse.Namespace) -> int:
    """Bump the identity's token generation in accounts.db (or Redis); a running relay reads it
    on login, and closes the identity's open connections within a few seconds (relay/app.py)."""
    registry = _registry(args)
    try:
        account = registry.account_named(args.name)
        subject = account.subject if account is not None else _subject_in_store(args)
        if subject is None:
            print(f"chat-relay: nobody is called {args.name}", file=sys.stderr)
            return 1
        generation = registry.revoke(subject)
    finally:
        registry.close()
    print(f"revoked every token of {args.name} (generation {generation})")
    return 0


def _subject_in_store(args: argparse.Namespace) -> str | None:
    path = Path(args.db) if args.db else args.state_dir / "chat.db"
    if not path.exists():
        return None
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT subject FROM names WHERE folded = ?", (key(args.name),)).fetchone()
    except sqlite3.Error:
        row = None
    finally:
        db.close()
    return None if row is None else str(row[0])


def _registry(args: argparse.Namespace) -> Registry:
    """Accounts, generations and invite-only rooms: every node's in Redis with --redis, else
    this relay's in STATE_DIR/accounts.db. Exits with one line when that cannot be had."""
    if not args.redis:
        return SQLiteRegistry(None if args.db == ":memory:" else args.state_dir / "accounts.db")
    from relay.redis_registry import RedisRegistry

    try:
        return RedisRegistry(args.redis)
    except (*RedisRegistry.unavailable, ValueError) as exc:
        raise SystemExit(f"chat-relay: cannot use Redis: {exc}") from None


def _secret(args: argparse.Namespace) -> bytes:
    """The token signing secret: --secret, else the one every node on the Redis shares, else the
    one kept in the state dir."""
    if not args.redis or args.secret:
        return load_secret(args.secret, args.state_dir)
    from relay.redis_registry import RedisRegistry, shared_secret

    try:
        return shared_secret(args.redis)
    except (*RedisRegistry.unavailable, ValueError) as exc:
        raise SystemExit(f"chat-relay: cannot use Redis: {exc}") from None


def _capacity(max_connections: int) -> int:
    """Raise the soft file-descriptor limit to the hard one; the connections that leaves room for.

    Every socket is a descriptor, and the common soft default of 1,024 would let a thousand
    idle sockets lock everyone else out long before the machine is busy.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    room = max(16, soft - FD_RESERVE)
    capacity = min(max_connections, room) if max_connections > 0 else room
    print(f"file descriptors: {soft}; connections held at most: {capacity}", flush=True)
    return capacity


def _require_redis() -> None:
    """One line and exit, rather than a traceback, when --redis is given without redis-py."""
    try:
        import redis  # noqa: F401
    except ImportError:
        raise SystemExit(REDIS_MISSING) from None


def _cluster(args: argparse.Namespace, history: int) -> tuple[Store, Backplane]:
    """The Redis store and backplane; one line and exit when they cannot be had."""
    from relay.redis_backplane import RedisBackplane
    from relay.store.redis import RedisStore

    try:
        store = RedisStore(args.redis, history, forget_days=args.forget_identities_days)
    except (StoreUnavailable, ValueError) as exc:
        # Not the URL: it may carry Redis's password.
        raise SystemExit(f"chat-relay: cannot use Redis: {exc}") from None
    return store, RedisBackplane(args.redis, store, ttl=args.node_ttl)


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
