"""The relay's HTTP API, for `/rooms`, `chat-tui rooms` and `chat-tui send`.

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

TIMEOUT = 10.0


class ApiError(Exception):
    """One line saying what went wrong; callers show it as is."""


def rooms_now(base: str) -> list[dict[str, Any]]:
    body = _request("GET", f"{base}/rooms")
    rooms = body.get("rooms")
    return [room for room in rooms if isinstance(room, dict)] if isinstance(rooms, list) else []


def post_now(base: str, room: str, sender: str, text: str) -> dict[str, Any]:
    url = f"{base}/rooms/{quote(room, safe='')}/messages"
    return _request("POST", url, {"from": sender, "text": text})


async def list_rooms(base: str) -> list[dict[str, Any]]:
    import asyncio

    return await asyncio.to_thread(rooms_now, base)


async def post_message(base: str, room: str, sender: str, text: str) -> dict[str, Any]:
    import asyncio

    return await asyncio.to_thread(post_now, base, room, sender, text)


def _request(method: str, url: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise ApiError(f"{url}: bad port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ApiError(f"{url}: not an http:// or https:// URL")
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname, port, timeout=TIMEOUT)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    body = None if payload is None else json.dumps(payload).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    try:
        connection.request(method, path, body=body, headers=headers)
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
