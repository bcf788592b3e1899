"""Accounts, token generations and invite-only rooms shared by several relays on one Redis.

One contract for every registry backend (SQLite file, SQLite in memory, Redis), then two real
relay processes on one real `redis-server`: a name registered on one is a login on the other,
tokens are valid on both, a revocation cuts connections on both, and an invite-only room keeps
strangers out on both.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import websockets

from relay.accounts import Account, NameTaken, Registry, SQLiteRegistry
from relay.cli import REDIS_MISSING
from relay.redis_registry import HOLD, TIMEOUT, RedisDown, RedisRegistry, shared_secret
from tests.redisproc import RedisProcess
from tests.relayproc import JsonClient, RelayProcess, closed, eventually
from tests.test_accounts import PASSWORD, login, registered
from tests.test_private_rooms import listed, named, refused

REVOKED = (1008, "token revoked: log in again")


def _account(subject: str, name: str) -> Account:
    # Bytes a text encoding would mangle: what the backend stores must come back exactly.
    return Account(subject, name, bytes(range(16)), bytes(range(255, 223, -1)))


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Registry]]:
    """Opens registries on one backing store: a second one stands for another node or process."""
    opened: list[Registry] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url

        def make() -> Registry:
            return RedisRegistry(url)
    else:
        path = tmp_path / "accounts.db" if request.param == "sqlite-file" else None

        def make() -> Registry:
            return SQLiteRegistry(path)

    def open_registry() -> Registry:
        registry = make()
        opened.append(registry)
        return registry

    yield open_registry
    for registry in opened:
        registry.close()


@pytest.fixture
def shared(
    request: pytest.FixtureRequest, backend: Callable[[], Registry]
) -> Callable[[], Registry]:
    """`backend`, where two registries see one store (not SQLite in memory: one per process)."""
    if request.node.callspec.params["backend"] == "sqlite-memory":
        pytest.skip("an in-memory registry is its relay's alone")
    return backend


def test_accounts_by_identity_and_by_look_alike_name(backend) -> None:
    registry = backend()
    carol = _account("s1", "Carol")
    assert registry.account("s1") is None and registry.account_named("carol") is None
    registry.add(carol)
    assert registry.account("s1") == carol
    for look_alike in ("Carol", "carol", "CAR0L", "caro1", "Caroi"):
        assert registry.account_named(look_alike) == carol
    assert registry.account_named("caroline") is None


def test_a_taken_name_or_identity_is_refused_whole(backend) -> None:
    registry = backend()
    registry.add(_account("s1", "carol"))
    with pytest.raises(NameTaken):
        registry.add(_account("s2", "car0l"))
    with pytest.raises(NameTaken):
        registry.add(_account("s1", "dave"))
    assert registry.account("s2") is None and registry.account_named("dave") is None
    assert registry.account_named("carol") == _account("s1", "carol")


def test_two_nodes_registering_one_name(shared) -> None:
    node_a, node_b = shared(), shared()
    node_a.add(_account("s1", "erin"))
    with pytest.raises(NameTaken):
        node_b.add(_account("s2", "Erin"))
    assert node_b.account_named("erin") == _account("s1", "erin")


def test_generations_and_revocation(backend) -> None:
    registry = backend()
    assert registry.generation("s1") == 0
    assert registry.revoke("s1") == 1
    assert registry.revoke("s1") == 2
    assert (registry.generation("s1"), registry.generation("s2")) == (2, 0)


def test_a_revocation_is_news_to_the_other_nodes_only(shared) -> None:
    node_a, node_b = shared(), shared()
    assert not node_a.changed_elsewhere() and not node_b.changed_elsewhere()
    node_a.revoke("s1")
    assert not node_a.changed_elsewhere()
    assert node_b.changed_elsewhere()
    assert not node_b.changed_elsewhere()
    assert node_b.generation("s1") == 1
    # Another node's revocation in between is news even to a node that revoked since.
    node_b.revoke("s2")
    node_a.revoke("s3")
    assert node_a.changed_elsewhere() and node_b.changed_elsewhere()


def test_invite_only_rooms(backend) -> None:
    registry = backend()
    rooms = ["club", "lobby", "empty"]
    assert not registry.is_private("club")
    assert registry.readable(rooms, None) == set(rooms)
    registry.set_private("club", True, {"s1", "s2"})
    registry.set_private("empty", True, set())
    assert registry.is_private("club") and registry.is_private("empty")
    assert registry.is_member("club", "s1") and not registry.is_member("club", "s3")
    registry.add_member("club", "s3")
    registry.remove_member("club", "s1")
    assert registry.is_member("club", "s3") and not registry.is_member("club", "s1")
    assert registry.readable(rooms, None) == {"lobby"}
    assert registry.readable(rooms, "s1") == {"lobby"}
    assert registry.readable(rooms, "s3") == {"club", "lobby"}
    registry.set_private("club", False, set())
    assert not registry.is_private("club") and not registry.is_member("club", "s3")
    assert registry.readable(rooms, None) == {"club", "lobby"}


def test_membership_is_the_same_on_every_node(shared) -> None:
    node_a, node_b = shared(), shared()
    node_a.set_private("club", True, {"s1"})
    node_a.add_member("club", "s2")
    assert node_b.is_private("club") and node_b.is_member("club", "s2")
    assert node_b.readable(["club"], "s2") == {"club"} and node_b.readable(["club"], "s9") == set()


def test_redis_keys_and_the_shared_secret(redis_server: RedisProcess) -> None:
    registry = RedisRegistry(redis_server.url)
    registry.add(_account("s1", "carol"))
    registry.revoke("s1")
    registry.set_private("club", True, {"s1"})
    secret = shared_secret(redis_server.url)
    assert len(secret) >= 32 and shared_secret(redis_server.url) == secret
    raw = redis.Redis.from_url(redis_server.url, decode_responses=True)
    assert all(name.startswith("chat:") for name in raw.keys("*"))
    raw.close()
    registry.close()


def test_a_hung_redis_stalls_the_hub_once_per_hold(redis_server: RedisProcess) -> None:
    registry = RedisRegistry(redis_server.url)
    assert redis_server.proc is not None
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            registry.generation("s1")
        assert time.monotonic() - started >= TIMEOUT * 0.9
        started = time.monotonic()
        for _ in range(20):
            with pytest.raises(RedisDown):
                registry.is_private("club")
        assert time.monotonic() - started < TIMEOUT / 2
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + HOLD + 5
    while True:
        try:
            assert registry.generation("s1") == 0
            break
        except RedisDown:
            assert time.monotonic() < deadline, "still held after Redis came back"
            time.sleep(0.05)
    registry.close()


def _node(factory: Callable[..., RelayProcess], server: RedisProcess, state: Path) -> RelayProcess:
    # Each node its own state dir: what they share comes from Redis, not from a common disk.
    return factory("--redis", server.url, "--state-dir", str(state), "--rate", "0")


async def _revoke(name: str, server: RedisProcess, state: Path) -> None:
    command = [sys.executable, "-m", "relay", "tokens", "revoke", name, "--redis", server.url]
    result = await asyncio.to_thread(
        subprocess.run,
        [*command, "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


async def test_accounts_and_tokens_on_every_node(relay_factory, redis_server, tmp_path) -> None:
    node_a = _node(relay_factory, redis_server, tmp_path / "a")
    node_b = _node(relay_factory, redis_server, tmp_path / "b")
    on_a = await registered(node_a, "lobby", "wendy")
    # The password works on the other node, and a token of either node is good on both.
    assert (await login(node_b, "wendy", "not the password")).status_code == 401
    answer = await login(node_b, "Wendy", PASSWORD)
    assert answer.status_code == 200 and answer.json()["name"] == "wendy"
    b_token = answer.json()["token"]
    on_b = await JsonClient.connect(node_b.url("lobby", f"token={on_a.welcome['token']}"))
    assert on_b.welcome["you"] == "wendy"
    again_on_a = await JsonClient.connect(node_a.url("lobby", f"token={b_token}"))
    assert again_on_a.welcome["you"] == "wendy"
    # A registered name is nobody else's on any node.
    async with httpx.AsyncClient(base_url=node_b.http) as http:
        taken = await http.post("/register", json={"name": "wendy", "password": PASSWORD})
    assert taken.status_code == 409
    # The admin revokes through Redis: both nodes cut their connections, refuse the tokens.
    await _revoke("wendy", redis_server, tmp_path / "cli")
    for client in (on_b, on_a, again_on_a):
        assert await closed(client.ws, timeout=10) == REVOKED
    assert await refused(node_b, "lobby", b_token) == REVOKED
    fresh = (await login(node_a, "wendy", PASSWORD)).json()["token"]
    back = await JsonClient.connect(node_b.url("lobby", f"token={fresh}"))
    assert back.welcome["you"] == "wendy"
    # Logging out everywhere on one node logs out on the other too.
    await back.send(type="logout_everywhere")
    assert await closed(back.ws) == (1008, "logged out everywhere: log in again")
    assert await refused(node_a, "lobby", fresh) == REVOKED


async def test_invite_only_on_every_node(relay_factory, redis_server, tmp_path) -> None:
    node_a = _node(relay_factory, redis_server, tmp_path / "a")
    node_b = _node(relay_factory, redis_server, tmp_path / "b")
    olga = await named(node_a, "club", "olga")
    pat = await named(node_a, "club", "pat")
    await olga.send(type="private", private=True)
    await pat.expect("private", private=True)
    stranger = await JsonClient.connect(node_b.url("lobby"))
    code, reason = await refused(node_b, "club", stranger.welcome["token"])
    assert code == 1008 and "invite-only" in reason
    assert (await refused(node_b, "club"))[0] == 1008
    p_token = pat.welcome["token"]
    pat_on_b = await JsonClient.connect(node_b.url("club", f"token={p_token}"))
    # Admitted by identity; its name is the one in its token until names cross nodes too.
    assert pat_on_b.welcome["private"] is True
    assert "club" not in await listed(node_b, stranger.welcome["token"])
    assert (await listed(node_b, p_token))["club"] is True
    for client in (olga, pat, stranger, pat_on_b):
        await client.close()


@pytest.mark.parametrize("command", [["serve", "--port", "0"], ["tokens", "revoke", "wendy"]])
def test_redis_without_redis_py_says_what_to_install(tmp_path, command) -> None:
    blocker = tmp_path / "blocked" / "redis"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('redis-py is not installed')\n")
    flags = ["--state-dir", str(tmp_path / "state"), "--redis", "redis://127.0.0.1:1/0"]
    result = subprocess.run(
        [sys.executable, "-m", "relay", *command, *flags],
        env={**os.environ, "PYTHONPATH": str(blocker.parent)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (1, REDIS_MISSING + "\n")


async def test_while_redis_is_away(relay_factory, tmp_path) -> None:
    """Refused for now (1013 and 503, which clients retry), no traceback; revocations resume."""
    server = RedisProcess(tmp_path / "redis", appendonly=True)
    try:
        node = _node(relay_factory, server, tmp_path / "a")
        wendy = await registered(node, "lobby", "wendy")
        server.stop()

        async def warned() -> bool | None:
            return "cannot read the accounts registry" in node.stderr_text() or None

        await eventually(warned, timeout=10)
        down = (1013, "accounts unavailable: try again shortly")
        assert await refused(node, "lobby", wendy.welcome["token"]) == down
        async with httpx.AsyncClient(base_url=node.http) as http:
            for answer in (
                await http.post("/login", json={"name": "wendy", "password": PASSWORD}),
                await http.get("/rooms"),
            ):
                assert (answer.status_code, answer.json()["error"]) == (503, "unavailable")
                assert answer.headers["retry-after"]
        await wendy.send(type="nick", name="walter")
        assert await closed(wendy.ws) == down
        assert "Traceback" not in node.stderr_text()
        server.start()
        url = node.url("lobby", f"token={wendy.welcome['token']}")

        async def rejoined() -> JsonClient | None:
            # As clients do after a 1013: try again until the relay asks Redis again (HOLD).
            try:
                return await JsonClient.connect(url)
            except websockets.ConnectionClosed:
                return None

        wendy = await eventually(rejoined, timeout=HOLD + 10, interval=0.2)
        assert wendy.welcome["you"] == "wendy"
        await _revoke("wendy", server, tmp_path / "cli")
        assert await closed(wendy.ws, timeout=10) == REVOKED
    finally:
        server.stop()
