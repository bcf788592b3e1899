"""`chat-tui --plain`, `rooms` and `send`: the real console script in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from tests.relayproc import JsonClient, closed

TIMEOUT = 20


def run(args, *, stdin: str = "", env_dir=None, timeout: float = TIMEOUT):
    env = {**os.environ}
    if env_dir is not None:
        env["XDG_STATE_HOME"] = str(env_dir / "state")
        env["XDG_CONFIG_HOME"] = str(env_dir / "config")
    return subprocess.run(
        [sys.executable, "-m", "tui", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


async def run_async(args, *, stdin: str = "", env_dir=None):
    return await asyncio.to_thread(run, args, stdin=stdin, env_dir=env_dir)


def server(relay) -> list[str]:
    return ["--server", f"ws://127.0.0.1:{relay.port}"]


async def test_piped_lines_are_delivered_before_exit(relay, room, tmp_path):
    watcher = await JsonClient.connect(relay.url(room))
    result = await run_async(
        ["--plain", "connect", room, *server(relay)], stdin="hello\nworld\n", env_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    first = await watcher.expect("message")
    second = await watcher.expect("message")
    assert [first["text"], second["text"]] == ["hello", "world"]
    name = first["from"]
    assert result.stdout.splitlines() == [f"{name} :: hello", f"{name} :: world"]
    assert f"* joined #{room} as {name}" in result.stderr
    await watcher.close()


async def test_count_json_and_events(relay, room, tmp_path):
    task = asyncio.create_task(
        run_async(
            ["--plain", "connect", room, "--count", "2", "--json", *server(relay)],
            env_dir=tmp_path,
        )
    )
    sender = await JsonClient.connect(relay.url(room))
    while (await sender.expect("join", timeout=TIMEOUT))["name"] == sender.welcome["you"]:
        pass
    for text in ("one", "two", "[bold]x\x1b[2J"):
        await sender.send(type="say", text=text)
    result = await task
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "welcome"
    assert [e["text"] for e in events if e["type"] == "message"] == ["one", "two"]
    await sender.close()


async def test_commands_and_sanitized_output(relay, room, tmp_path):
    other = await JsonClient.connect(relay.url(room))
    task = asyncio.create_task(
        run_async(
            ["--plain", "connect", room, "--count", "1", "--events", *server(relay)],
            stdin="/nick plain-bot\n/bogus\n",
            env_dir=tmp_path,
        )
    )
    await other.expect("nick", new="plain-bot", timeout=TIMEOUT)
    # The relay refuses escape sequences at the door (tests/test_input.py); markup gets through.
    await other.send(type="say", text="evil\x1b]52;c;ZXZpbA==\x07")
    assert (await other.expect("error"))["code"] == "bad_text"
    await other.send(type="say", text="evil [@click=app.quit]x[/]")
    result = await task
    assert result.returncode == 0, result.stderr
    assert f"{other.welcome['you']} :: evil [@click=app.quit]x[/]" in result.stdout
    assert "is now known as plain-bot" in result.stdout
    assert "unknown command /bogus" in result.stderr
    assert "\x1b" not in result.stdout
    await other.close()


def test_connection_refused_is_one_line(tmp_path):
    result = run(["--plain", "connect", "room1", "--server", "ws://127.0.0.1:9"], env_dir=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "chat-tui: cannot connect to ws://127.0.0.1:9/chat/room1: connection refused"
    ]
    assert result.stdout == ""


def test_bad_room_and_timeout_exit_codes(relay, room, tmp_path):
    result = run(["--plain", "connect", "no spaces", *server(relay)], env_dir=tmp_path)
    assert result.returncode == 2
    assert "room name may contain only" in result.stderr
    assert "Traceback" not in result.stderr
    waiting = ["--plain", "connect", room, "--count", "1", "--timeout", "0.5", *server(relay)]
    result = run(waiting, env_dir=tmp_path)
    assert result.returncode == 3
    assert "timed out after 0.5s" in result.stderr


async def test_send_and_rooms_over_http(relay, room, tmp_path):
    watcher = await JsonClient.connect(relay.url(room))
    result = await run_async(
        ["send", room, "deploy finished", "--from", "ci-bot", *server(relay)], env_dir=tmp_path
    )
    assert result.returncode == 0, result.stderr
    message = await watcher.expect("message")
    assert (message["from"], message["text"], message.get("via")) == (
        "ci-bot",
        "deploy finished",
        "http",
    )
    result = await run_async(["rooms", *server(relay)], env_dir=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{room}\t1" in result.stdout.splitlines()
    bad = await run_async(["send", room, "x", "--from", "bad name", *server(relay)])
    assert bad.returncode == 1
    assert bad.stderr.startswith("chat-tui: bad_name:")
    await watcher.close()


def test_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "chat-tui")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0
    assert "connect" in result.stdout


async def test_requests_without_a_direct_reply_do_not_hang(relay, room, tmp_path):
    """`/accept`, `/decline` and `/topic` must let --plain finish whether they succeed or are
    refused: the subprocess timeout is the guard, no --timeout is given."""
    args = ["--plain", "connect", room, *server(relay)]
    owner = await run_async(args, stdin="/topic owned\n", env_dir=tmp_path)
    assert owner.returncode == 0, owner.stderr
    assert "set the topic: owned" in owner.stderr
    target = f"target-{room}"
    first = await run_async([*args, "--name", target], env_dir=tmp_path / "target")
    assert first.returncode == 0, first.stderr
    other = await JsonClient.connect(relay.url(room))
    await other.send(type="dm", to=target, text="psst")
    await other.expect("dm", timeout=TIMEOUT)
    pending = f"/accept {other.welcome['you']}\n"
    for stdin, env_dir in (
        (pending, tmp_path / "target"),
        ("/accept somebody\n", tmp_path / "target"),
        ("/decline somebody\n", tmp_path / "other"),
        ("/topic x\nhello\n", tmp_path / "other"),
    ):
        result = await asyncio.to_thread(run, args, stdin=stdin, env_dir=env_dir, timeout=10)
        assert result.returncode in (0, 1), result.stderr
    assert "not_owner" in result.stderr
    assert (await other.expect("message", timeout=TIMEOUT))["text"] == "hello"
    await other.close()


async def test_one_server_address_rule_for_every_command(relay, room, tmp_path):
    """http://, https://-style and bare host:port work for send, rooms and connect alike;
    a bad address is one line on stderr and exit 2, never a traceback."""
    http, bare = f"http://127.0.0.1:{relay.port}", f"127.0.0.1:{relay.port}"
    sent = await run_async(["send", room, "over http", "--server", http], env_dir=tmp_path)
    assert sent.returncode == 0, sent.stderr
    for address in (http, bare, f"ws://127.0.0.1:{relay.port}/"):
        rooms = await run_async(["rooms", "--server", address], env_dir=tmp_path)
        assert rooms.returncode == 0, rooms.stderr
        joined = await run_async(
            ["--plain", "connect", room, "--server", address], stdin="hi\n", env_dir=tmp_path
        )
        assert joined.returncode == 0, joined.stderr
    for address, why in (
        ("ws://127.0.0.1:99999", "port must be a number from 1 to 65535"),
        ("ftp://127.0.0.1:1", "use ws://, wss://, http://, https:// or host:port"),
    ):
        for command in (["send", room, "x"], ["rooms"], ["--plain", "connect", room]):
            result = await run_async([*command, "--server", address], env_dir=tmp_path)
            assert result.returncode == 2, (command, result.stderr)
            assert result.stderr.count("\n") == 1 and why in result.stderr, result.stderr


async def test_plain_name_is_taken_before_the_first_line(relay, room, tmp_path):
    watcher = await JsonClient.connect(relay.url(room))
    result = await run_async(
        ["--plain", "connect", room, "--name", f"bot-{room}", *server(relay)],
        stdin="first line\n",
        env_dir=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    message = await watcher.expect("message", timeout=TIMEOUT)
    assert (message["text"], message["from"]) == ("first line", f"bot-{room}")
    await watcher.close()


async def test_plain_exits_non_zero_when_a_line_is_refused(relay, room, tmp_path):
    result = await run_async(
        ["--plain", "connect", room, *server(relay)],
        stdin="ok\n" + "x" * 5000 + "\n",
        env_dir=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "too_large" in result.stderr and "(not sent: xxx" in result.stderr


async def test_plain_owner_kicks_and_closes(relay, room, tmp_path):
    """`/kick` and `/close` from a script: the victim is closed with 4001, everyone with 4002,
    and the owner's run ends with 0 (the room closing was what it asked for)."""
    args = ["--plain", "connect", room, *server(relay)]
    owner_dir = tmp_path / "owner"
    # A message keeps the room (and its owner) after the owner leaves: a room with no members
    # and no history is forgotten, and its next joiner would own it.
    first = await run_async(args, stdin="mine\n", env_dir=owner_dir)
    assert first.returncode == 0, first.stderr
    victim = await JsonClient.connect(relay.url(room))
    bystander = await JsonClient.connect(relay.url(room))
    kicked = await run_async(args, stdin=f"/kick {victim.welcome['you']}\n", env_dir=owner_dir)
    assert kicked.returncode == 0, kicked.stderr
    assert (await closed(victim.ws))[0] == 4001
    closing = await run_async(args, stdin="/close\n", env_dir=owner_dir)
    assert closing.returncode == 0, closing.stderr
    assert "closed the room" in closing.stderr
    assert (await closed(bystander.ws))[0] == 4002
