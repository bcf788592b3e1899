"""The relay's HTTP API, for `/rooms` and the `rooms`, `send`, `login` and `register` commands.

Built on the standard library's `http.client`: `chat-tui send` runs once per message from
scripts, and an HTTP client library (httpx: 160-220 ms to import) cost more than the request.
The `_now` functions block and serve the one-shot commands without an event loop; the async
ones run them in a thread for the full-screen client and `--plain`.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit

from tui import access

TIMEOUT = 10.0


class ApiError(Exception):
    """One line saying what went wrong; callers show it as is."""


def rooms_now(base: str, token: str | None = None) -> list[dict[str, Any]]:
    """Active rooms; with the identity token, also the invite-only rooms it is a member of."""
    headers = {"X-Chat-Token": token} if token else {}
    body = _request("GET", f"{base}/rooms", headers=headers)
    rooms = body.get("rooms")
    return [room for room in rooms if isinstance(room, dict)] if isinstance(rooms, list) else []


def post_now(base: str, room: str, sender: str, text: str) -> dict[str, Any]:
    url = f"{base}/rooms/{quote(room, safe='')}/messages"
    return _request("POST", url, {"from": sender, "text": text})


def login_now(base: str, name: str, password: str) -> dict[str, Any]:
    return _request("POST", f"{base}/login", {"name": name, "password": password})


def register_now(base: str, password: str, token: str | None, name: str | None) -> dict[str, Any]:
    body = {"password": password, "token": token} if token else {"password": password, "name": name}
    return _request("POST", f"{base}/register", body)


async def list_rooms(base: str, token: str | None = None) -> list[dict[str, Any]]:
    import asyncio

    return await asyncio.to_thread(rooms_now, base, token)


async def post_message(base: str, room: str, sender: str, text: str) -> dict[str, Any]:
    import asyncio

    return await asyncio.to_thread(post_now, base, room, sender, text)


def _request(
    method: str,
    url: str,
    payload: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ApiError(f"{url}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"{url}: not an http:// or https:// URL")
    settings = access.current
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        context = settings.ssl_context()
        connection = http.client.HTTPSConnection(
            parts.hostname, port, timeout=TIMEOUT, context=context
        )
    else:
        connection = http.client.HTTPConnection(parts.hostname, port, timeout=TIMEOUT)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = None if payload is None else json.dumps(payload).encode()
    sent = {**settings.headers(), **(headers or {})}
    if body is not None:
        sent["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
    except ConnectionRefusedError:
        raise ApiError(f"cannot connect to {url}: connection refused") from None
    except TimeoutError:
        raise ApiError(f"{url}: timed out after {TIMEOUT:g}s") from None
    except (OSError, http.client.HTTPException) as error:
        raise ApiError(f"{url}: {error or type(error).__name__}") from None
    finally:
        connection.close()
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise ApiError(f"{url}: HTTP {response.status}, not a JSON object")
    if response.status >= 400:
        raise ApiError(f"{answer.get('error', response.status)}: {answer.get('detail', '')}")
    return answer
