"""The Starlette skin over the hub: the `/chat/{room}` WebSocket endpoint and the HTTP API."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from relay import announce
from relay.connection import Connection
from relay.core import STORE_DOWN, Hub, PostError
from relay.direct import Flusher
from relay.login import account_routes, threaded_offload
from relay.metrics import render_store
from relay.store import StoreUnavailable
from relay.webclient import WebClient
from shared import protocol as p

log = logging.getLogger("relay.app")

_POST_STATUS = {
    p.NAME_TAKEN: 409,
    p.TOO_LARGE: 413,
    p.RATE_LIMITED: 429,
    p.NOT_MEMBER: 403,
    p.UNAVAILABLE: 503,
}
_COUNT_DIGITS = 18
# How long a client refused with 503 should wait: the store retries at most this far apart.
RETRY_AFTER = "2"
# How often the relay looks for tokens revoked by `chat-relay tokens revoke` (another process).
REVOKE_CHECK_SECONDS = 2.0
# Why a connection is closed (1011, which clients retry) or a request answered 503 while the
# accounts registry (Redis, with --redis) cannot be read: no fault of the client's.
REGISTRY_DOWN = "accounts unavailable: try again shortly"
STORE_UNREACHABLE = "the relay cannot reach its store: try again later"


class ChatEndpoint:
    """`/chat/{room}`: negotiates the protocol, then feeds frames to the hub until disconnect.

    A raw ASGI app rather than a Starlette function endpoint so the writer can hand frames to
    the server's `send` directly, without a wrapper call per frame.
    """

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.flusher = Flusher()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        json_mode = p.SUBPROTOCOL in scope.get("subprotocols", ())
        await websocket.accept(subprotocol=p.SUBPROTOCOL if json_mode else None)
        room = scope["path_params"]["room"]
        try:
            params = _join_params(websocket, self.hub.limits.history)
        except ValueError as bad:
            await websocket.close(p.CLOSE_POLICY, str(bad))
            return
        try:
            problem = p.room_error(room) or self.hub.refusal(params["token"], room)
        except self.hub.registry.unavailable as error:
            log.warning("cannot read the accounts registry: %s", error)
            await websocket.close(p.CLOSE_TRY_AGAIN, REGISTRY_DOWN)
            return
        if problem is not None:
            await websocket.close(p.CLOSE_POLICY, problem)
            return
        limit = self.hub.limits.send_queue_bytes
        peer = scope.get("client")
        address = str(peer[0]) if peer else ""
        connection = Connection(send, json_mode, limit, self.flusher, address)
        path = "direct" if connection.direct else "asgi"
        if path != self.hub.metrics.write_path:
            log.warning(
                "write path is %s, not %s as expected at start", path, self.hub.metrics.write_path
            )
            self.hub.metrics.write_path = path
        try:
            try:
                self.hub.join(connection, room, **params)
            except StoreUnavailable:
                connection.close(p.CLOSE_TRY_AGAIN, STORE_UNREACHABLE, flush=True)
                return
            while True:
                message = await receive()
                if message["type"] != "websocket.receive":
                    break
                text = message.get("text")
                if text is None:
                    self.hub.receive_binary(connection)
                else:
                    self.hub.receive(connection, text)
        except self.hub.registry.unavailable as error:
            log.warning("cannot read the accounts registry: %s", error)
            connection.close(p.CLOSE_TRY_AGAIN, REGISTRY_DOWN, flush=True)
        finally:
            self.hub.leave(connection)
            await connection.finish()


def _join_params(websocket: WebSocket, history: int) -> dict[str, Any]:
    query = websocket.query_params
    backlog = _count(query, "backlog")
    return {
        "token": query.get("token"),
        "epoch": query.get("epoch"),
        "since": _count(query, "since"),
        "backlog": None if backlog is None else min(backlog, history),
    }


def create_app(hub: Hub, key: str | None = None) -> Router:
    hub.offload = threaded_offload

    async def healthz(request: Request) -> Response:
        problem = hub.health_problem()
        health = {
            "status": "ok",
            "connections": len(hub.clients),
            "rooms": len(hub.rooms),
            "node": hub.backplane.node,
        }
        if problem is None:
            return JSONResponse(health)
        health |= {"status": "unavailable", "reason": problem}
        return JSONResponse(health, status_code=503, headers={"Retry-After": RETRY_AFTER})

    async def rooms(request: Request) -> Response:
        # Invite-only rooms are listed to their members only (identity token as for /chat).
        counts = hub.room_members()
        visible = hub.registry.readable(list(counts), hub.subject_for(_token(request)))
        listing = [
            {
                "room": room,
                "members": members,
                "connections": connections,
                "topic": hub.room_topic(room),
                "owner": hub.owner_name(room),
                "private": hub.registry.is_private(room),
            }
            for room, (members, connections) in sorted(counts.items())
            if room in visible
        ]
        return JSONResponse({"rooms": listing})

    async def messages(request: Request) -> Response:
        room = request.path_params["room"]
        problem = p.room_error(room)
        if problem is not None:
            return _error(400, p.BAD_ROOM, problem)
        if request.method == "POST":
            return await _post(request, room)
        if not hub.may_enter(room, hub.subject_for(_token(request))):
            return _error(403, p.NOT_MEMBER, f"#{room} is invite-only: members only")
        try:
            before = _count(request.query_params, "before")
            limit = _count(request.query_params, "limit")
        except ValueError as bad:
            return _error(400, p.BAD_REQUEST, str(bad))
        if limit == 0:
            # The same rule as chat.v1 `history`: a page of nothing is a mistake, not a default.
            return _error(400, p.BAD_REQUEST, "limit must be a positive integer")
        limit = min(hub.limits.backlog if limit is None else limit, p.HISTORY_PAGE_MAX)
        epoch, seq, page = hub.history_page(room, before, limit)
        return JSONResponse({"room": room, "epoch": epoch, "seq": seq, "messages": page})

    async def _post(request: Request, room: str) -> Response:
        try:
            body = p.parse(await request.body())
        except ValueError:
            return _error(400, p.BAD_JSON, "body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, p.BAD_JSON, "body must be a JSON object")
        sender, text = body.get("from"), body.get("text")
        if not isinstance(sender, str) or not isinstance(text, str):
            return _error(400, p.BAD_REQUEST, "'from' and 'text' must be strings")
        try:
            address = request.client.host if request.client else ""
            message = hub.post(room, sender, text, address)
        except PostError as refused:
            response = _error(_POST_STATUS.get(refused.code, 400), refused.code, refused.detail)
            if refused.code == p.UNAVAILABLE:
                response.headers["Retry-After"] = RETRY_AFTER
            return response
        return JSONResponse(message, status_code=201)

    async def metrics(request: Request) -> Response:
        body = hub.metrics.render(len(hub.clients), len(hub.rooms), hub.user_count())
        body += render_store(*hub.store_counters(), hub.store_healthy())
        body += hub.backplane_metrics()
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    async def unavailable(request: Request, exc: Exception) -> Response:
        response = _error(503, p.UNAVAILABLE, STORE_DOWN)
        response.headers["Retry-After"] = RETRY_AFTER
        return response

    async def registry_down(request: Request, error: Exception) -> Response:
        log.warning("cannot read the accounts registry: %s", error)
        response = _error(503, p.UNAVAILABLE, REGISTRY_DOWN)
        response.headers["Retry-After"] = RETRY_AFTER
        return response

    api = Starlette(
        exception_handlers={
            StoreUnavailable: unavailable,
            **{kind: registry_down for kind in hub.registry.unavailable},
        },
        routes=[
            Route("/healthz", healthz),
            Route("/rooms", rooms),
            Route("/rooms/{room}/messages", messages, methods=["GET", "POST"]),
            Route("/metrics", metrics),
            *account_routes(hub),
            Route("/announce", announce.endpoint(hub, key), methods=["POST"]),
            Mount("/", WebClient()),
        ],
    )
    # The chat endpoint sits on a bare router, outside Starlette's exception middleware, so
    # the `send` it gets is the server's own (see relay/direct.py); HTTP keeps the middleware.
    return Router(routes=[WebSocketRoute("/chat/{room}", ChatEndpoint(hub)), Mount("/", api)])


def _token(request: Request) -> str | None:
    """An identity token on an HTTP request: `?token=` or `X-Chat-Token` (Authorization is
    the access key's)."""
    return request.query_params.get("token") or request.headers.get("x-chat-token")


def _count(query: QueryParams, field: str) -> int | None:
    raw = query.get(field)
    if raw is None or raw == "":
        return None
    # A bound on digits keeps int() from failing on its own limit with a message longer than
    # a close frame can carry.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _COUNT_DIGITS:
        raise ValueError(f"{field} must be a non-negative integer below 10^{_COUNT_DIGITS}")
    return int(raw)


def _error(status: int, code: str, detail: str) -> Response:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


async def watch_revocations(hub: Hub, every: float = REVOKE_CHECK_SECONDS) -> None:
    """Cut connections whose tokens `chat-relay tokens revoke` revoked, until cancelled.

    A timer, not a check per message: the message path stays free of database reads, and a
    revocation takes effect within `every` seconds.
    """
    while True:
        await asyncio.sleep(every)
        try:
            cut = hub.cut_revoked()
        except hub.registry.unavailable as error:
            log.warning("cannot read the accounts registry for revoked tokens: %s", error)
            continue
        if cut:
            log.info("closed %d connection(s) of revoked identities", cut)


async def drain(hub: Hub, timeout: float) -> None:
    """Close every connection with 1001 after flushing its queue; wait for them, up to `timeout`."""
    hub.close_all(p.CLOSE_GOING_AWAY, "going away")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while hub.clients and loop.time() < deadline:
        await asyncio.sleep(0.02)
