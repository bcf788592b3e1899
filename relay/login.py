"""`POST /login` and `POST /register`: a name and password in, the identity's token out.

With the token a second device is the same user as the first: same name, DMs, read markers and
history. Password hashing runs on a worker thread so the event loop keeps serving chat.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.accounts import (
    PASSWORD_MAX,
    LoginThrottle,
    NameTaken,
    check_password,
    new_account,
    password_problem,
)
from relay.core import Hub
from relay.names import name_problem
from relay.tokens import new_subject
from shared import protocol as p


def threaded_offload(work: Callable[[], Any], done: Callable[[Any], None]) -> None:
    """Hub.offload on a worker thread; `done` runs back on the event loop."""
    future = asyncio.get_running_loop().run_in_executor(None, work)
    future.add_done_callback(lambda finished: done(finished.result()))


def account_routes(hub: Hub) -> list[Route]:
    throttle = LoginThrottle()

    async def login(request: Request) -> Response:
        body = await _body(request)
        if isinstance(body, Response):
            return body
        name, password = body.get("name"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            return _error(400, p.BAD_REQUEST, "'name' and 'password' must be strings")
        address = request.client.host if request.client else "?"
        if not throttle.allow(name, address, asyncio.get_running_loop().time()):
            response = _error(429, p.RATE_LIMITED, "too many login attempts; wait a minute")
            response.headers["Retry-After"] = "12"
            return response
        account = hub.registry.account_named(name)
        if len(password) > PASSWORD_MAX:
            return _error(401, "bad_login", "wrong name or password")  # no account's password
        if not await asyncio.to_thread(check_password, account, password) or account is None:
            return _error(401, "bad_login", "wrong name or password")
        token = hub.issue_token(account.subject, account.name)
        return JSONResponse({"name": account.name, "token": token})

    async def register(request: Request) -> Response:
        """Claim a name: the token's identity's current name, or (no token) a new identity."""
        body = await _body(request)
        if isinstance(body, Response):
            return body
        password, token, name = body.get("password"), body.get("token"), body.get("name")
        if not isinstance(password, str):
            return _error(400, p.BAD_REQUEST, "'password' must be a string")
        problem = password_problem(password)
        if problem is not None:
            return _error(400, p.BAD_PASSWORD, problem)
        # Each registration costs a password hash: the same allowance as logins.
        address = request.client.host if request.client else "?"
        label = name if isinstance(name, str) else "?"
        if not throttle.allow(label, address, asyncio.get_running_loop().time()):
            return _error(429, p.RATE_LIMITED, "too many attempts; wait a minute")
        if isinstance(token, str):
            refused = hub.refusal(token)
            claims = hub.signer.claims(token)
            if refused is not None or claims is None:
                return _error(401, "bad_token", refused or "not a token of this relay")
            subject = claims.subject
            name = hub.stored_name(subject) or claims.name
        elif isinstance(name, str):
            problem = name_problem(name)
            if problem is not None:
                return _error(400, p.BAD_NAME, problem)
            subject = new_subject()
        else:
            return _error(400, p.BAD_REQUEST, "give 'token' (yours) or 'name' (a new one)")
        if hub.registry.account(subject) is not None:
            return _error(409, p.REGISTERED, f"{name} is already registered")
        account = await asyncio.to_thread(new_account, subject, name, password)
        try:
            problem = hub.add_account(account)
        except NameTaken:  # registered on another node since the hub checked
            problem = f"{name} is already taken (or looks like a name that is)"
        if problem is not None:
            return _error(409, p.NAME_TAKEN, problem)
        token = hub.issue_token(subject, name)
        return JSONResponse({"name": name, "token": token}, status_code=201)

    return [
        Route("/login", login, methods=["POST"]),
        Route("/register", register, methods=["POST"]),
    ]


async def _body(request: Request) -> dict[str, Any] | Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        return _error(400, p.BAD_JSON, "body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, p.BAD_JSON, "body must be a JSON object")
    return body


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)
