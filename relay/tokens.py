"""Signed identity tokens, so one person keeps one name across tabs, devices and restarts.

A token names an identity (a random subject) and the name it had when the token was issued.
The store's record of the subject wins; the name in the token is the fallback for a store
that forgot it (the in-memory one, after a restart). It also carries when it was issued (for
expiry) and the identity's token generation: revoking an identity's tokens bumps the
generation, which refuses every token issued before. Tokens from before these fields count
as generation 0 issued at the relay's start.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

_SEP = "."


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Claims:
    subject: str
    name: str
    issued: float
    generation: int
    # False for identities another service vouches for (relay/jwt_tokens.py).
    revocable: bool = True


class TokenSigner:
    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._started = time.time()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()[:18])

    def issue(self, subject: str, name: str, generation: int = 0) -> str:
        payload = _b64(f"{subject}\n{name}\n{int(time.time())}\n{generation}".encode())
        return payload + _SEP + self._mac(payload)

    def verify(self, token: str) -> tuple[str, str] | None:
        """(subject, name) from a token this relay signed, or None for anything else."""
        claims = self.claims(token)
        return None if claims is None else (claims.subject, claims.name)

    def rejection(self, token: str) -> str | None:
        """Why a token must be refused outright rather than ignored; ours never are (a bad
        one just starts a new identity), tokens from a configured issuer may be."""
        return None

    def claims(self, token: str) -> Claims | None:
        payload, _, mac = token.partition(_SEP)
        # compare_digest refuses non-ASCII str (TypeError); no token this relay signs has any.
        if not mac or not token.isascii() or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            subject, name, *rest = _unb64(payload).decode().split("\n")
            issued = float(rest[0]) if rest else self._started
            generation = int(rest[1]) if len(rest) > 1 else 0
        except (ValueError, UnicodeDecodeError):
            return None
        return Claims(subject, name, issued, generation) if subject and name else None


def new_subject() -> str:
    return secrets.token_hex(8)


def load_secret(explicit: str | None, state_dir: Path) -> bytes:
    """The signing secret: the configured one, else one generated once and kept in `state_dir`.

    Keeping the generated secret on disk is what lets tokens survive a relay restart.
    """
    if explicit:
        return explicit.encode()
    path = state_dir / "secret"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another relay on the same state dir got there first: share its secret.
        return path.read_bytes()
    with os.fdopen(fd, "wb") as file:
        file.write(secret)
    return secret
