"""Identity tokens signed by the team's own service (single sign-on), checked with PyJWT.

The way Centrifugo lets an application issue connection JWTs: the team's login service signs
`{"sub": user id, "name": display name, "exp": …}` with an HS256 secret or an RS256 private key,
and the relay, configured with the secret or the public key, takes `?token=<JWT>` as that
identity. Subjects are prefixed with `jwt:` so they never meet the relay's random ones. The
issuer owns these identities: expiry is the JWT's `exp`, and revocation is the issuer's job
(issue short-lived tokens); `chat-relay tokens revoke` does not apply to them.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt

from relay.tokens import Claims, TokenSigner

SUBJECT_PREFIX = "jwt:"


class JwtSigner(TokenSigner):
    """The relay's own tokens as before, plus JWTs from the configured issuer."""

    def __init__(self, secret: bytes, key: str | bytes, algorithm: str) -> None:
        super().__init__(secret)
        self._key = key
        self._algorithm = algorithm

    def claims(self, token: str) -> Claims | None:
        own = super().claims(token)
        if own is not None or token.count(".") != 2:
            return own
        try:
            payload = self._decode(token)
        except jwt.InvalidTokenError:
            return None
        name = payload.get("name")
        return Claims(
            SUBJECT_PREFIX + str(payload["sub"]),
            name if isinstance(name, str) and name else str(payload["sub"]),
            time.time(),
            0,
            revocable=False,
        )

    def rejection(self, token: str) -> str | None:
        if token.count(".") != 2 or super().claims(token) is not None:
            return None
        try:
            self._decode(token)
        except jwt.ExpiredSignatureError:
            return "identity token expired: sign in again"
        except jwt.InvalidTokenError as bad:
            return f"identity token refused: {bad}"[:120]
        return None

    def _decode(self, token: str) -> dict[str, object]:
        decoded: dict[str, object] = jwt.decode(
            token, self._key, algorithms=[self._algorithm], options={"require": ["sub"]}
        )
        return decoded


def jwt_signer(secret: bytes, jwt_secret: str | None, public_key: Path | None) -> TokenSigner:
    """The signer for `chat-relay serve`: with JWT support only when it is configured."""
    if public_key is not None:
        return JwtSigner(secret, public_key.read_bytes(), "RS256")
    if jwt_secret:
        return JwtSigner(secret, jwt_secret.encode(), "HS256")
    return TokenSigner(secret)
