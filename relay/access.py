"""Who may talk to the relay at all: access key, browser Origin, Host, content type, CORS.

One ASGI middleware in front of every route, so no endpoint can forget a check. It looks at
each request once, before the endpoint runs, and passes the server's own `send` through
untouched for WebSockets (relay/direct.py recognises uvicorn's protocol behind it).

- Key: with `--key`, every request must carry it (`Authorization: Bearer KEY`, or `?key=KEY`
  for clients that cannot set headers, such as browsers); `/healthz` and `/metrics` stay open
  so probes and scrapers need no secret.
- Origin: a browser sends `Origin` with every WebSocket handshake and cross-site POST; a page
  on another site must not join rooms or post through the user's browser. Requests without
  an Origin (every non-browser client) are allowed.
- Host: a page on `evil.example` that re-points its DNS name at 127.0.0.1 (DNS rebinding)
  reaches a relay bound to localhost with `Host: evil.example`; the Host check refuses it.
- Content-Type: a cross-site `text/plain` form post needs no CORS preflight; demanding
  `application/json` on POST makes every cross-site write preflighted, hence refused.
"""

from __future__ import annotations

import argparse
import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import protocol as p

OPEN_PATHS = frozenset({"/healthz", "/metrics"})
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}


@dataclass(frozen=True)
class AccessPolicy:
    """What the middleware enforces; the defaults let everything through (a laptop demo)."""

    key: str | None = None
    allow_origins: frozenset[str] = frozenset()
    # None: any Host (the relay cannot know the names it is reached by on a network).
    allow_hosts: frozenset[str] | None = None
    cors_origins: frozenset[str] = field(default_factory=frozenset)


def default_hosts(bind: str, extra: list[str]) -> frozenset[str] | None:
    """`--allow-host` values, or for a relay bound to loopback its loopback names.

    A relay bound to a loopback address is reachable only from this machine, so any other
    Host header can only come from a rebound DNS name. Bound elsewhere, the names it is
    reached by are the operator's to list; without `--allow-host` Host is not checked.
    """
    if extra:
        return frozenset(host.lower() for host in extra)
    if _is_loopback(bind):
        return LOOPBACK_HOSTS | {bind.lower()}
    return None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AccessMiddleware:
    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket") or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is None:
            if kind == "http" and scope["method"] == "OPTIONS":
                await self._preflight(headers)(scope, receive, send)
            elif kind == "http" and scope["method"] in ("GET", "HEAD"):
                await self.app(scope, receive, self._with_cors(headers, send))
            else:
                await self.app(scope, receive, send)
            return
        status, code, detail = refusal
        if kind == "websocket":
            await _refuse_websocket(scope, receive, send, detail)
            return
        response = JSONResponse({"error": code, "detail": detail}, status_code=status)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="chat-relay"'
        await response(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        """(HTTP status, error code, reason) for a request that may not pass, else None."""
        policy = self.policy
        host = headers.get("host", "")
        if policy.allow_hosts is not None and _hostname(host) not in policy.allow_hosts:
            return 421, "bad_host", f"host {host[:100]!r} is not served here"
        method = scope.get("method", "GET")
        writes = scope["type"] == "websocket" or method not in ("GET", "HEAD", "OPTIONS")
        origin = headers.get("origin")
        if writes and origin is not None and not self._origin_ok(origin, host, scope):
            return 403, "bad_origin", f"origin {origin[:100]!r} is not allowed"
        if policy.key is not None and method != "OPTIONS" and not self._key_ok(scope, headers):
            given = "authorization" in headers or b"key=" in scope.get("query_string", b"")
            return 401, "unauthorized", "wrong access key" if given else "access key required"
        if method == "POST":
            media = headers.get("content-type", "").partition(";")[0].strip().lower()
            if media != "application/json":
                return 415, "unsupported_media_type", "POST bodies must be application/json"
        return None

    def _origin_ok(self, origin: str, host: str, scope: Scope) -> bool:
        if origin in self.policy.allow_origins:
            return True
        parts = urlsplit(origin)
        if not parts.hostname:
            return False  # "null" (sandboxed frames, file: pages) and garbage
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        return _netloc(parts.scheme, parts.netloc) == _netloc(scheme, host)

    def _key_ok(self, scope: Scope, headers: Headers) -> bool:
        expected = self.policy.key
        assert expected is not None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            given = query.get("key", "")
        return hmac.compare_digest(given.strip().encode(), expected.encode())

    def _preflight(self, headers: Headers) -> Response:
        """CORS preflight: only the read-only endpoints, only for `--cors-origin` sites."""
        origin = headers.get("origin", "")
        response = Response(status_code=204)
        if self._cors_allowed(origin):
            response.headers.update(
                {
                    "Access-Control-Allow-Origin": origin,
                    "Access-Control-Allow-Methods": "GET",
                    "Access-Control-Allow-Headers": "Authorization",
                    "Access-Control-Max-Age": "600",
                    "Vary": "Origin",
                }
            )
        return response

    def _cors_allowed(self, origin: str) -> bool:
        allowed = self.policy.cors_origins
        return bool(origin) and (origin in allowed or "*" in allowed)

    def _with_cors(self, headers: Headers, send: Send) -> Send:
        origin = headers.get("origin", "")
        if not self._cors_allowed(origin):
            return send

        async def cors_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"vary", b"Origin"),
                ]
            await send(message)

        return cors_send


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, reason: str) -> None:
    """Accept, then close with 1008 and the reason: a refused handshake would tell a client
    only "HTTP 403", while a close frame carries a reason it can show."""
    await receive()  # websocket.connect
    offered = scope.get("subprotocols", ())
    subprotocol = p.SUBPROTOCOL if p.SUBPROTOCOL in offered else None
    await send({"type": "websocket.accept", "subprotocol": subprotocol})
    await send({"type": "websocket.close", "code": p.CLOSE_POLICY, "reason": reason})


def _hostname(host: str) -> str:
    """`Host` without its port: `[::1]:8000` → `::1`, `Example.com:80` → `example.com`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _netloc(scheme: str, netloc: str) -> str:
    """host:port with the scheme's default port spelled out, for comparing origins."""
    netloc = netloc.lower()
    port_given = netloc.rpartition(":")[2] if not netloc.endswith("]") else ""
    if port_given.isdigit():
        return netloc
    return f"{netloc}:{_DEFAULT_PORTS.get(scheme.lower(), 80)}"


# -- command line ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The access flags of `chat-relay serve`; each also reads CHAT_RELAY_<FLAG>."""

    def env(flag: str) -> str:
        return "CHAT_RELAY_" + flag.upper().replace("-", "_")

    add = parser.add_argument
    add(
        "--key",
        default=os.environ.get(env("key")),
        help=f"access key every client must present (open: /healthz, /metrics) [{env('key')}]",
    )
    for flag, help_text in (
        ("allow-origin", "browser origin allowed besides the relay's own (repeatable)"),
        ("allow-host", "Host header value served (repeatable; default: loopback names)"),
        ("cors-origin", "site whose pages may read the GET endpoints, or * (repeatable)"),
    ):
        listed = [value for value in os.environ.get(env(flag), "").split(",") if value]
        add(f"--{flag}", action="append", default=listed, help=f"{help_text} [{env(flag)}]")
    for flag in ("ssl-certfile", "ssl-keyfile"):
        add(f"--{flag}", default=os.environ.get(env(flag)), help=f"TLS: PEM file [{env(flag)}]")


def policy_from(args: argparse.Namespace) -> AccessPolicy:
    return AccessPolicy(
        key=args.key or None,
        allow_origins=frozenset(origin.rstrip("/") for origin in args.allow_origin),
        allow_hosts=default_hosts(args.host, args.allow_host),
        cors_origins=frozenset(origin.rstrip("/") for origin in args.cors_origin),
    )
