"""Who may talk to the relay: access key, browser Origin, Host, content type, CORS, TLS."""

from __future__ import annotations

import asyncio
import logging
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from relay.logs import LogScrubber
from shared.protocol import SUBPROTOCOL
from tests import rawws
from tests.relayproc import JsonClient, RelayProcess, closed
from tests.test_cli_plain import run_async

KEY = "s3cret-team-key"


async def refused(url: str, **kwargs) -> tuple[int, str]:
    ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], **kwargs)
    return await closed(ws)


@pytest.fixture
def keyed(relay_factory) -> RelayProcess:
    return relay_factory("--rate", "0", env={"CHAT_RELAY_KEY": KEY})


async def test_websocket_needs_the_key(keyed: RelayProcess) -> None:
    assert await refused(keyed.url("r1")) == (1008, "access key required")
    assert await refused(keyed.url("r1", "key=guess")) == (1008, "wrong access key")
    bad_header = {"Authorization": "Bearer guess"}
    assert await refused(keyed.url("r1"), additional_headers=bad_header) == (
        1008,
        "wrong access key",
    )
    by_query = await JsonClient.connect(keyed.url("r1", f"key={KEY}"))
    by_header = await JsonClient.connect(
        keyed.url("r1"), additional_headers={"Authorization": f"Bearer {KEY}"}
    )
    assert by_header.welcome["room"] == by_query.welcome["room"] == "r1"
    await by_query.close()
    await by_header.close()


async def test_http_needs_the_key_but_health_and_metrics_are_open(keyed: RelayProcess) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=keyed.http) as http:
        for path in ("/rooms", "/rooms/r1/messages"):
            response = await http.get(path)
            assert (response.status_code, response.json()["error"]) == (401, "unauthorized")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert (await http.get(path, headers=auth)).status_code == 200
            assert (await http.get(path, params={"key": KEY})).status_code == 200
        body = {"from": "deploy-bot", "text": "v1"}
        response = await http.post("/rooms/r1/messages", json=body)
        assert response.status_code == 401
        response = await http.post("/rooms/r1/messages", json=body, headers=auth)
        assert response.status_code == 201
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 200


async def test_a_foreign_origin_cannot_use_the_browsers_way_in(relay_factory) -> None:
    relay = relay_factory("--allow-origin", "https://app.example")
    evil = await refused(relay.url("r1"), origin="http://evil.example")
    assert evil[0] == 1008 and "http://evil.example" in evil[1]
    assert (await refused(relay.url("r1"), origin="null"))[0] == 1008
    same_host = await JsonClient.connect(relay.url("r1"), origin=f"http://127.0.0.1:{relay.port}")
    listed = await JsonClient.connect(relay.url("r1"), origin="https://app.example")
    no_origin = await JsonClient.connect(relay.url("r1"))  # not a browser
    for client in (same_host, listed, no_origin):
        await client.close()
    async with httpx.AsyncClient(base_url=relay.http) as http:
        body = {"from": "page-bot", "text": "posted by a web page"}
        response = await http.post(
            "/rooms/r1/messages", json=body, headers={"Origin": "http://evil.example"}
        )
        assert (response.status_code, response.json()["error"]) == (403, "bad_origin")
        response = await http.post(
            "/rooms/r1/messages", json=body, headers={"Origin": "https://app.example"}
        )
        assert response.status_code == 201
        # Reading is not a state change: allowed, but no CORS header lets the page see it.
        response = await http.get("/rooms", headers={"Origin": "http://evil.example"})
        assert response.status_code == 200
        assert "access-control-allow-origin" not in response.headers


async def test_text_plain_cross_site_post_is_refused(relay: RelayProcess, room: str) -> None:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        response = await http.post(
            f"/rooms/{room}/messages",
            content=b'{"from":"form-bot","text":"hi from a form"}',
            headers={"Content-Type": "text/plain", "Origin": f"http://127.0.0.1:{relay.port}"},
        )
        assert (response.status_code, response.json()["error"]) == (415, "unsupported_media_type")
        response = await http.post(
            f"/rooms/{room}/messages",
            content=b'{"from":"form-bot","text":"hi"}',
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        assert response.status_code == 201
        messages = (await http.get(f"/rooms/{room}/messages")).json()["messages"]
    assert [m["text"] for m in messages] == ["hi"]


async def test_host_check_against_dns_rebinding(relay: RelayProcess) -> None:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        response = await http.get("/rooms", headers={"Host": "evil.example"})
        assert (response.status_code, response.json()["error"]) == (421, "bad_host")
        for host in (f"localhost:{relay.port}", f"127.0.0.1:{relay.port}", "[::1]"):
            assert (await http.get("/rooms", headers={"Host": host})).status_code == 200
        assert (await http.get("/healthz", headers={"Host": "evil.example"})).status_code == 200


async def test_allow_host_replaces_the_loopback_names(relay_factory) -> None:
    relay = relay_factory("--allow-host", "chat.example")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        assert (await http.get("/rooms", headers={"Host": "chat.example"})).status_code == 200
        assert (await http.get("/rooms", headers={"Host": "Chat.Example:443"})).status_code == 200
        assert (await http.get("/rooms")).status_code == 421


async def test_cors_is_opt_in_for_reading(relay_factory, relay: RelayProcess) -> None:
    dash = "https://dash.example"
    async with httpx.AsyncClient(base_url=relay.http) as http:
        response = await http.get("/rooms", headers={"Origin": dash})
        assert "access-control-allow-origin" not in response.headers
    opted = relay_factory("--cors-origin", dash, "--allow-origin", dash)
    async with httpx.AsyncClient(base_url=opted.http) as http:
        response = await http.get("/rooms", headers={"Origin": dash})
        assert response.headers["access-control-allow-origin"] == dash
        preflight = await http.options(
            "/rooms/r1/messages",
            headers={"Origin": dash, "Access-Control-Request-Method": "GET"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-methods"] == "GET"
        other = await http.get("/rooms", headers={"Origin": "https://other.example"})
        assert "access-control-allow-origin" not in other.headers
        # Writes never get CORS headers, even from an allowed origin.
        post = await http.post(
            "/rooms/r1/messages", json={"from": "dash-bot", "text": "x"}, headers={"Origin": dash}
        )
        assert post.status_code == 201
        assert "access-control-allow-origin" not in post.headers


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_tls_relay_and_client_with_a_private_ca(relay_factory, certificate, tmp_path):
    cert, key = certificate
    relay = relay_factory(
        "--rate", "0", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key), "--key", KEY
    )
    trust = ssl.create_default_context(cafile=str(cert))
    url = f"wss://127.0.0.1:{relay.port}/chat/secure?key={KEY}"
    watcher = await JsonClient.connect(url, ssl=trust)
    with pytest.raises(ssl.SSLCertVerificationError):
        await websockets.connect(url)  # the system trust store does not know this CA
    async with httpx.AsyncClient(verify=trust) as https:
        health = await https.get(f"https://127.0.0.1:{relay.port}/healthz")
        assert health.json()["status"] == "ok"
    server = ["--server", f"wss://127.0.0.1:{relay.port}"]
    result = await run_async(
        ["--plain", "connect", "secure", *server, "--key", KEY, "--ca-file", str(cert)],
        stdin="over tls\n",
        env_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (await watcher.expect("message"))["text"] == "over tls"
    await watcher.close()


async def test_chat_tui_shows_why_it_was_refused(keyed: RelayProcess, tmp_path) -> None:
    server = ["--server", f"ws://127.0.0.1:{keyed.port}"]
    result = await run_async(["--plain", "connect", "r1", *server], env_dir=tmp_path)
    assert result.returncode == 1
    assert "access key required" in result.stderr
    result = await run_async(["rooms", *server], env_dir=tmp_path)
    assert result.returncode == 1 and "access key required" in result.stderr
    config = tmp_path / "config" / "chat-tui" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f'key = "{KEY}"\n')
    watcher = await JsonClient.connect(keyed.url("r1", f"key={KEY}"))
    result = await run_async(
        ["--plain", "connect", "r1", *server], stdin="with the key\n", env_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (await watcher.expect("message"))["text"] == "with the key"
    await watcher.close()


def test_keys_and_tokens_are_redacted_in_logs() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '"GET /chat/r?key=%s&token=%s"',
        ("k", "t"),
        None,
    )
    LogScrubber().filter(record)
    assert record.getMessage() == '"GET /chat/r?key=[redacted]&token=[redacted]"'


async def test_unkeyed_relay_still_open(relay: RelayProcess, room: str) -> None:
    client = await JsonClient.connect(relay.url(room))
    await asyncio.wait_for(client.close(), 5)


async def test_websocket_with_a_rebound_host_is_closed(relay: RelayProcess) -> None:
    """A page on evil.example whose name now points at 127.0.0.1 opens the WebSocket."""
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    handshake = rawws.upgrade("/chat/rebound").replace(b"Host: 127.0.0.1", b"Host: evil.example")
    writer.write(handshake)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    opcode, payload = await asyncio.wait_for(rawws.read_frame(reader), 5)
    assert opcode == 0x8
    assert int.from_bytes(payload[:2], "big") == 1008
    assert b"evil.example" in payload[2:] and b"not served here" in payload[2:]
    writer.close()
