"""Identity tokens from the team's own sign-on service (HS256 secret or RS256 public key)."""

from __future__ import annotations

import time

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.protocol import SUBPROTOCOL
from tests.relayproc import JsonClient, closed

SSO_SECRET = "team-sso-secret-0123456789abcdef"


async def test_hs256_identity_tokens(relay_factory) -> None:
    relay = relay_factory("--jwt-secret", SSO_SECRET)
    claims = {"sub": "u-1001", "name": "hanna", "exp": int(time.time()) + 300}
    laptop_jwt = jwt.encode(claims, SSO_SECRET, algorithm="HS256")
    phone_jwt = jwt.encode({**claims, "iat": int(time.time())}, SSO_SECRET, algorithm="HS256")
    laptop = await JsonClient.connect(relay.url("team", f"token={laptop_jwt}"))
    phone = await JsonClient.connect(relay.url("team", f"token={phone_jwt}"))
    assert laptop.welcome["you"] == phone.welcome["you"] == "hanna"
    assert laptop.welcome["members"] == ["hanna"]  # two devices, one user
    # The relay's own token for that identity works too, e.g. after the JWT expired.
    again = await JsonClient.connect(relay.url("team", f"token={laptop.welcome['token']}"))
    assert again.welcome["you"] == "hanna"
    for client in (laptop, phone, again):
        await client.close()


@pytest.mark.parametrize(
    ("claims", "secret", "reason"),
    [
        ({"sub": "u-1", "name": "ivy", "exp": 1}, SSO_SECRET, "identity token expired"),
        ({"sub": "u-1", "name": "ivy"}, "not-the-team-secret-at-all-000000", "refused"),
        ({"name": "ivy"}, SSO_SECRET, "refused"),
    ],
    ids=["expired", "forged", "no-sub"],
)
async def test_bad_identity_tokens_are_refused(relay_factory, claims, secret, reason) -> None:
    relay = relay_factory("--jwt-secret", SSO_SECRET)
    token = jwt.encode(claims, secret, algorithm="HS256")
    ws = await websockets.connect(relay.url("team", f"token={token}"), subprotocols=[SUBPROTOCOL])
    code, text = await closed(ws)
    assert code == 1008 and reason in text


async def test_rs256_identity_tokens(relay_factory, tmp_path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "sso.pub").write_bytes(public_pem)
    relay = relay_factory("--jwt-public-key", str(tmp_path / "sso.pub"))
    token = jwt.encode({"sub": "42", "name": "jonas"}, private, algorithm="RS256")
    client = await JsonClient.connect(relay.url("team", f"token={token}"))
    assert client.welcome["you"] == "jonas"
    await client.close()
    hs = jwt.encode({"sub": "42", "name": "jonas"}, "guess-" * 8, algorithm="HS256")
    ws = await websockets.connect(relay.url("team", f"token={hs}"), subprotocols=[SUBPROTOCOL])
    assert (await closed(ws))[0] == 1008
