"""One rule for the relay's address, whatever command or config file it comes from.

Accepted: `ws://`, `wss://`, `http://`, `https://` URLs and a bare `host:port` (taken as
`ws://`). The result is always a WebSocket URL without a trailing slash; the HTTP API is the
same host and port with the matching `http`/`https` scheme.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_SCHEMES = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}


class ServerError(ValueError):
    """The address cannot be used; the message is one line meant for the user."""


def server_url(text: str) -> str:
    raw = text.strip()
    if not raw:
        raise ServerError("the server address is empty")
    parts = urlsplit(raw if "://" in raw else f"ws://{raw}")
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ServerError(f"{raw!r}: use ws://, wss://, http://, https:// or host:port")
    if not parts.hostname:
        raise ServerError(f"{raw!r}: no host name")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0 or (port is None and parts.netloc.endswith(":")):
        raise ServerError(f"{raw!r}: the port must be a number from 1 to 65535")
    if parts.query or parts.fragment:
        raise ServerError(f"{raw!r}: a server address has no ?query or #fragment")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def http_base(server: str) -> str:
    """The relay's HTTP API lives on the same host and port as its WebSocket endpoint."""
    url = server_url(server)
    return ("https://" if url.startswith("wss://") else "http://") + url.split("://", 1)[1]
