"""The browser client's files (relay/web/), served at `/` with headers that keep them honest.

The page shows text written by strangers. Its own code never puts that text into markup, and
the Content-Security-Policy is the second line: no inline script, nothing from another origin,
no plugin, no framing, WebSockets only back to the host the page came from.
"""

from __future__ import annotations

import re
from pathlib import Path

from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

WEB_DIR = Path(__file__).with_name("web")

# A Host header is copied into the policy only when it is a plain host[:port]; anything else
# (a header built to smuggle a directive) falls back to 'self' alone.
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def content_security_policy(host: str | None) -> str:
    # 'self' covers ws:/wss: to the same host in CSP 3 browsers; older ones need it spelt out.
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        f"connect-src 'self'{sockets}; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class WebClient:
    """Static files, each sent with the security headers."""

    def __init__(self, directory: Path = WEB_DIR) -> None:
        self.files = StaticFiles(directory=directory, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"host":
                host = value.decode("latin-1")
        headers = [
            (b"content-security-policy", content_security_policy(host).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-cache"),
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.files(scope, receive, send_with_headers)


def how_to_connect(host: str, port: int, room: str = "lobby") -> list[str]:
    """The lines `serve` prints after its address, so a newcomer knows both ways in."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return [
        f"in a browser: http://{host}:{port}/#{room}",
        f"in a terminal: chat-tui connect {room} --server ws://{host}:{port}",
    ]
