"""The relay's HTTP API (httpx), for `/rooms`, `chat-tui rooms` and `chat-tui send`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from tui import access

TIMEOUT = 10.0


class ApiError(Exception):
    """One line saying what went wrong; callers show it as is."""


async def list_rooms(base: str, token: str | None = None) -> list[dict[str, Any]]:
    """Active rooms; with the identity token, also the invite-only rooms it is a member of."""
    headers = {"X-Chat-Token": token} if token else {}
    body = await _request("GET", f"{base}/rooms", headers=headers)
    rooms = body.get("rooms")
    return [room for room in rooms if isinstance(room, dict)] if isinstance(rooms, list) else []


async def post_message(base: str, room: str, sender: str, text: str) -> dict[str, Any]:
    url = f"{base}/rooms/{quote(room, safe='')}/messages"
    return await _request("POST", url, json={"from": sender, "text": text})


async def login(base: str, name: str, password: str) -> dict[str, Any]:
    return await _request("POST", f"{base}/login", json={"name": name, "password": password})


async def register(base: str, password: str, token: str | None, name: str | None) -> dict[str, Any]:
    body = {"password": password, "token": token} if token else {"password": password, "name": name}
    return await _request("POST", f"{base}/register", json=body)


async def _request(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    try:
        settings = access.current
        verify = settings.ssl_context() if url.startswith("https:") else True
        async with httpx.AsyncClient(
            timeout=TIMEOUT, headers=settings.headers(), verify=verify
        ) as client:
            response = await client.request(method, url, **kwargs)
    except httpx.ConnectError:
        raise ApiError(f"cannot connect to {url}: connection refused") from None
    except httpx.HTTPError as error:
        raise ApiError(f"{url}: {error or type(error).__name__}") from None
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(f"{url}: HTTP {response.status_code}, not a JSON object")
    if response.is_error:
        raise ApiError(f"{body.get('error', response.status_code)}: {body.get('detail', '')}")
    return body
