"""`chat-relay demo`: history, bots that talk and answer, a clean stop on Ctrl+C."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from tests.relayproc import JsonClient, RelayProcess

BOTS = {"ada", "bruno", "chen"}


class Demo(RelayProcess):
    """The demo in a subprocess, fast-forwarded (`--pace`); its port read like serve's."""

    def __init__(self, pace: float) -> None:
        command = [sys.executable, "-m", "relay", "demo", "--pace", str(pace)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.port = self._read_port()
        self.http = f"http://127.0.0.1:{self.port}"

    def stderr_text(self) -> str:
        return ""


async def test_demo_has_history_bots_that_talk_and_answer_and_stops_on_ctrl_c() -> None:
    demo = Demo(pace=0.05)
    try:
        assert demo.proc.stdout is not None
        printed = [demo.proc.stdout.readline().decode() for _ in range(6)]
        assert any("chat-tui connect lobby dev random" in line for line in printed)
        assert any(f"http://127.0.0.1:{demo.port}/#lobby,dev,random" in line for line in printed)

        client = await JsonClient.connect(demo.url("lobby", "backlog=200"))
        replay = [await client.expect("message") for _ in range(client.welcome["replay"])]
        assert len(replay) >= 10
        assert client.welcome["topic"]
        oldest = datetime.fromisoformat(replay[0]["ts"])
        assert datetime.now(UTC) - oldest > timedelta(hours=20)
        me = client.welcome["you"]
        greeting = await client.expect("message", timeout=10, text=f"welcome, {me}! 👋")
        assert greeting["from"] in BOTS

        live = await client.expect("message", timeout=10)
        assert live["from"] in BOTS

        await client.send(type="say", text="hey chen, are you a bot?")
        while True:
            answer = await client.expect("message", timeout=10)
            if answer["from"] == "chen" and me in answer["text"]:
                break

        await client.send(type="dm", to="ada", text="hello ada")
        assert (await client.expect("dm_accepted", timeout=10))["by"] == "ada"
        reply = await client.expect("dm", timeout=10)
        while reply["from"] != "ada":
            reply = await client.expect("dm", timeout=10)
        assert reply["to"] == me
    finally:
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(timeout=10) == 0
