"""The client against a real relay that crashes, refuses, or stays down: bugs 1, 2 and 6."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter

from tests.relayproc import JsonClient, RelayProcess
from tests.test_tui_reconnect import free_port
from tui.client.link import Backoff, Identity, RoomLink, State, Status

TIMEOUT = 30


def plain(port: int, room: str, home, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "XDG_STATE_HOME": str(home / "state")}
    env["XDG_CONFIG_HOME"] = str(home / "config")
    command = [sys.executable, "-m", "tui", "--plain", "connect", room]
    command += ["--server", f"ws://127.0.0.1:{port}", "--timeout", str(TIMEOUT), *extra]
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


async def texts_in(relay: RelayProcess, room: str) -> Counter[str]:
    """Every message text the room keeps, counted."""
    reader = await JsonClient.connect(relay.url(room, "backlog=200"))
    texts = Counter(
        str(e["text"]) for e in [await reader.next() for _ in range(reader.welcome["replay"])]
    )
    await reader.close()
    return texts


async def test_plain_sends_its_queue_once_after_the_relay_is_killed(relay_factory, room, tmp_path):
    """Bug 1: a SIGKILLed relay comes back with a new epoch and replays messages the client has
    shown. The client must still go live, deliver what was typed meanwhile exactly once, and
    exit when stdin ends."""
    port = free_port()
    relay = relay_factory("--rate", "0", port=port)
    other = await JsonClient.connect(relay.url(room))
    for text in ("old one", "old two"):
        await other.send(type="say", text=text)
        await other.expect("message", text=text)
    client = plain(port, room, tmp_path, "--backlog", "5")
    await other.expect("join", timeout=TIMEOUT)
    assert client.stdin is not None
    client.stdin.write("before the crash\n")
    client.stdin.flush()
    await other.expect("message", text="before the crash", timeout=TIMEOUT)

    relay.stop(signal.SIGKILL)
    client.stdin.write("typed while down\n")
    client.stdin.flush()
    restarted = relay_factory("--rate", "0", port=port)
    out, err = await asyncio.to_thread(
        client.communicate, input="typed after restart\n", timeout=TIMEOUT + 10
    )
    assert client.returncode == 0, err

    kept = await texts_in(restarted, room)
    # A write the relay had not committed when it was killed may be lost; never doubled.
    assert kept["before the crash"] <= 1, kept
    for text in ("typed while down", "typed after restart"):
        assert kept[text] == 1, (text, kept)
    shown = [line.split(" :: ", 1)[1] for line in out.splitlines()]
    assert Counter(shown)["old one"] == 1, out
    assert err.count("disconnected") == 1, err


async def test_accept_nobody_then_a_message_blames_the_accept(relay, room, tmp_path):
    """Bug 6: the error answers `/accept nobody`; the message after it is sent, and
    not reported as `not sent`."""
    watcher = await JsonClient.connect(relay.url(room))
    client = plain(relay.port, room, tmp_path)
    _, err = await asyncio.to_thread(
        client.communicate, input="/accept nobody-here\nhello after\n", timeout=TIMEOUT + 10
    )
    assert (await watcher.expect("message", timeout=TIMEOUT))["text"] == "hello after"
    assert "not sent" not in err, err
    assert "no pending request from nobody-here (/accept nobody-here)" in err, err
    assert client.returncode == 1, "the refused accept is reported in the exit status"
    await watcher.close()


async def test_json_output_keeps_the_relays_request_field(relay, room, tmp_path):
    client = plain(relay.port, room, tmp_path, "--json")
    out, _ = await asyncio.to_thread(
        client.communicate, input="/decline nobody-here\n", timeout=TIMEOUT + 10
    )
    errors = [line for line in out.splitlines() if '"error"' in line]
    assert errors and '"request": "dm_decline"' in errors[0], out
    assert '"cid": ' in errors[0]


async def test_backoff_grows_while_the_relay_stays_down(relay_factory, room):
    """Bug 2: after a connection was up, every attempt used to wait the shortest delay. With
    the relay gone, the delays follow the schedule; the sleep is the clock the test controls."""
    port = free_port()
    relay = relay_factory("--rate", "0", port=port)
    delays: list[float] = []
    statuses: list[Status] = []
    went_live = asyncio.Event()
    attempts_done = asyncio.Event()

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) >= 8:
            attempts_done.set()
            await asyncio.Event().wait()

    def on_status(status: Status) -> None:
        statuses.append(status)
        if status.state == State.CONNECTED:
            went_live.set()

    link = RoomLink(
        f"ws://127.0.0.1:{port}",
        room,
        Identity(None, lambda _: None),
        lambda event, request: None,
        on_status,
        backoff=Backoff(base=0.5, cap=8.0),
        sleep=sleep,
    )
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(went_live.wait(), TIMEOUT)
        relay.stop(signal.SIGKILL)
        await asyncio.wait_for(attempts_done.wait(), TIMEOUT)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for attempt, delay in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= delay <= ceiling, delays
    retrying = [s for s in statuses if s.state == State.RECONNECTING]
    assert retrying[-1].url == f"ws://127.0.0.1:{port}/chat/{room}"
    assert retrying[-1].detail == "connection refused"
