"""Announcements: one operator notice to every room, over HTTP (`POST /announce`) and the CLI.

Only someone holding the relay's access key may announce: a notice looks official in every
client, so a relay started without a key refuses them all rather than let anyone speak for
the operator.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from relay.core import Hub, PostError
from shared import protocol as p

NO_KEY = "no_key"
DEFAULT_SERVER = "http://127.0.0.1:8000"
TIMEOUT = 10.0


def endpoint(hub: Hub, key: str | None) -> Callable[[Request], Awaitable[Response]]:
    async def announce(request: Request) -> Response:
        # With a key, relay.access has already refused every request that lacks it.
        if key is None:
            detail = "announcements need a relay started with --key (CHAT_RELAY_KEY)"
            return _error(403, NO_KEY, detail)
        try:
            body = p.parse(await request.body())
        except ValueError:
            return _error(400, p.BAD_JSON, "body is not valid JSON")
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            return _error(400, p.BAD_REQUEST, "'text' must be a string")
        try:
            event, rooms = hub.announce(text)
        except PostError as refused:
            status = 413 if refused.code == p.TOO_LARGE else 400
            return _error(status, refused.code, refused.detail)
        return JSONResponse({**event, "rooms": rooms}, status_code=201)

    return announce


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


# -- `chat-relay announce TEXT` -------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "announce",
        help="send a notice to every room of a running relay",
        description="Needs the key the relay was started with (--key or CHAT_RELAY_KEY).",
    )
    parser.add_argument("text", help="the notice")
    server = os.environ.get("CHAT_RELAY_SERVER", DEFAULT_SERVER)
    where = f"the relay, http:// or ws:// [CHAT_RELAY_SERVER, {server}]"
    parser.add_argument("--server", default=server, help=where)
    parser.add_argument(
        "--key", default=os.environ.get("CHAT_RELAY_KEY"), help="access key [CHAT_RELAY_KEY]"
    )


def http_base(server: str) -> str:
    server = server.rstrip("/")
    if server.startswith("wss://"):
        return "https://" + server.removeprefix("wss://")
    if server.startswith("ws://"):
        return "http://" + server.removeprefix("ws://")
    return server if "://" in server else f"http://{server}"


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 sent, 1 refused or unreachable, 2 no key to send."""
    if not args.key:
        need = "chat-relay: announce needs the relay's key (--key or CHAT_RELAY_KEY)"
        print(need, file=sys.stderr)
        return 2
    # Here, not at the top: every `chat-relay serve` imports this module, and httpx alone
    # is a fifth of a second of its start.
    import httpx

    url = f"{http_base(args.server)}/announce"
    try:
        response = httpx.post(
            url,
            json={"text": args.text},
            headers={"Authorization": f"Bearer {args.key}"},
            timeout=TIMEOUT,
        )
    except httpx.HTTPError as error:
        print(f"chat-relay: cannot reach {url}: {error}", file=sys.stderr)
        return 1
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 201 or not isinstance(body, dict):
        detail = body.get("detail") if isinstance(body, dict) else None
        reason = detail or response.text[:200]
        print(f"chat-relay: refused ({response.status_code}): {reason}", file=sys.stderr)
        return 1
    rooms = body.get("rooms")
    print(f"announced to {rooms} room{'' if rooms == 1 else 's'}")
    return 0
