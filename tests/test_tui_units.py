"""The client's plain parts without a relay: completion, history, config, commands, log."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from websockets.asyncio.server import serve
from websockets.typing import Subprotocol

from shared.protocol import SUBPROTOCOL
from tui.client.commands import CommandError, parse
from tui.client.link import Backoff, Identity, RoomLink
from tui.client.room import mentions
from tui.completion import Completer
from tui.config import Config, ConfigError
from tui.lines import LineFormatter, name_color
from tui.state import InputHistory, TokenStore
from tui.widgets.chat_log import ChatLog


def test_completer_cycles_names_and_completes_commands():
    completer = Completer()
    names = ["bob", "Bea", "carl"]
    assert completer.complete("b", 1, names, []) == ("Bea: ", 5)
    assert completer.complete("Bea: ", 5, names, []) == ("bob: ", 5)
    assert completer.complete("bob: ", 5, names, []) == ("Bea: ", 5)
    completer.reset()
    assert completer.complete("hi ca", 5, names, []) == ("hi carl ", 8)
    assert completer.complete("/pa", 3, names, ["part", "join"]) == ("/part ", 6)
    assert completer.complete("zz", 2, names, []) is None


def test_input_history_persists_and_keeps_the_draft(tmp_path):
    path = tmp_path / "history"
    history = InputHistory(path, limit=3)
    for line in ("one", "two", "two", "three", "four"):
        history.add(line)
    assert path.read_text().splitlines() == ["two", "three", "four"]
    again = InputHistory(path)
    assert again.previous("draft") == "four"
    assert again.previous("") == "three"
    assert again.next() == "four"
    assert again.next() == "draft"
    assert again.next() is None


def test_token_store_is_per_server_and_private(tmp_path):
    store = TokenStore(tmp_path / "identity.json")
    store.put("ws://a", "token-a")
    store.put("ws://b", "token-b")
    assert (store.get("ws://a"), store.get("ws://b"), store.get("ws://c")) == (
        "token-a",
        "token-b",
        None,
    )
    assert (tmp_path / "identity.json").stat().st_mode & 0o077 == 0


def test_unwritable_state_keeps_working_in_memory(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = TokenStore(blocker / "identity.json")
    store.put("ws://a", "token-a")
    assert store.get("ws://a") == "token-a"
    history = InputHistory(blocker / "history")
    history.add("typed while the disk is full")
    assert history.previous("") == "typed while the disk is full"


def test_token_file_is_created_private(tmp_path):
    leftover = tmp_path / "identity.tmp"
    leftover.write_text("{}")
    leftover.chmod(0o644)
    TokenStore(tmp_path / "identity.json").put("ws://a", "token-a")
    assert (tmp_path / "identity.json").stat().st_mode & 0o777 == 0o600


def test_config_file_and_errors(tmp_path):
    path = tmp_path / "config.toml"
    assert Config.load(path) == Config()
    path.write_text('server = "wss://chat.example:443"\nbell = false\nmax_lines = 200\n')
    config = Config.load(path)
    assert (config.server, config.bell, config.max_lines) == ("wss://chat.example:443", False, 200)
    assert config.http_base == "https://chat.example:443"
    path.write_text("bell = 'loud'\n")
    with pytest.raises(ConfigError, match="bell must be a bool"):
        Config.load(path)
    path.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.load(path)


def test_commands_parse_and_refuse():
    assert parse("/msg bob hi there").split() == ("bob", "hi there")
    assert parse("/JOIN lobby").name == "join"
    for bad, why in [("/nope", "unknown command"), ("/join", "usage"), ("/msg bob", "usage")]:
        with pytest.raises(CommandError, match=why):
            parse(bad)


def test_backoff_grows_with_jitter_and_is_capped():
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [backoff.delay(attempt) for attempt in range(8)]
    assert all(0.25 <= d <= 4.0 for d in delays)
    assert delays[6] > delays[0]
    assert max(delays[5:]) <= 4.0


def test_lines_are_literal_text_with_stable_colours():
    moment = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    line = LineFormatter().message(moment, "ev[il]", "[bold]x\x1b[31m", own=False, mention=False)
    assert line.plain == "03:04 ev[il] [bold]x"
    untrusted = line.plain.index("[bold]")
    assert all(span.end <= untrusted for span in line.spans)
    assert name_color("alice", True) == name_color("alice", True)
    assert name_color("alice", True) != name_color("alice", False)
    assert mentions("hey Alice!", "alice") and not mentions("malice", "alice")


class LogApp(App[None]):
    def __init__(self, log: ChatLog) -> None:
        super().__init__()
        self.log_widget = log

    def compose(self) -> ComposeResult:
        yield self.log_widget


async def test_chat_log_bounds_prepends_and_tags():
    log = ChatLog(max_lines=50)
    async with LogApp(log).run_test(size=(60, 10)) as pilot:
        for n in range(120):
            log.write(Text(f"line {n}"))
        await pilot.pause()
        assert log.entry_count == 50
        assert log.plain_lines()[0] == "line 70"
        assert log.virtual_size.height == 50
        log.write(Text("marker"), tag="unread")
        log.remove_tag("unread")
        assert "marker" not in log.plain_lines()
        log.scroll_home(animate=False, immediate=True)
        await pilot.pause()
        log.write(Text("while scrolled up"))
        assert log.unseen == 1
        log.scroll_end(animate=False, immediate=True)
        await pilot.pause()
        assert log.unseen == 0


async def test_chat_log_rewraps_on_resize():
    log = ChatLog()
    async with LogApp(log).run_test(size=(40, 10)) as pilot:
        log.write(Text("word " * 20))
        await pilot.pause()
        narrow = log.virtual_size.height
        await pilot.resize_terminal(100, 10)
        await pilot.pause()
        assert log.virtual_size.height < narrow


async def test_link_survives_frames_that_are_not_events():
    """A relay that sends junk (not JSON, not an object, a bad replay count) must not kill the
    link: the junk is skipped and the next event still arrives."""

    async def junk_relay(ws) -> None:
        await ws.send("not json")
        await ws.send('[1]\n"text"\n{"type":"welcome","you":"me","token":"t","replay":"x"}')
        await ws.send('{"type":"message","id":"m1","seq":1,"from":"bob","text":"still alive"}')
        await ws.wait_closed()

    arrived = asyncio.Event()
    received = []

    def sink(event, request) -> None:
        received.append(event)
        if event.get("type") == "message":
            arrived.set()

    async with serve(junk_relay, "127.0.0.1", 0, subprotocols=[Subprotocol(SUBPROTOCOL)]) as srv:
        port = srv.sockets[0].getsockname()[1]
        link = RoomLink(f"ws://127.0.0.1:{port}", "r", Identity(None, lambda _: None), sink, repr)
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(arrived.wait(), timeout=5)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert [e["type"] for e in received] == ["welcome", "message"]
    assert link.last_seq == 1
