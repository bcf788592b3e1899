from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redisproc import RedisProcess
from tests.relayproc import RelayProcess
from tests.tmux import Terminals, terminals_for

_rooms = itertools.count(1)


@pytest.fixture(scope="session")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay shared by tests that only need defaults; each test uses its own rooms."""
    process = RelayProcess(tmp_path_factory.mktemp("relay-state"), "--rate", "0")
    yield process
    process.stop()


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[Callable[..., RelayProcess]]:
    """Relays with custom flags, stopped at the end of the test."""
    started: list[RelayProcess] = []

    def start(*args: str, port: int = 0, env: dict[str, str] | None = None) -> RelayProcess:
        process = RelayProcess(tmp_path / "state", *args, port=port, env=env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def room() -> str:
    """A room name no other test uses."""
    return f"room-{next(_rooms)}"


@pytest.fixture
def terminals(tmp_path: Path) -> Iterator[Terminals]:
    """Real `chat-tui` processes in tmux sessions (tests/tmux.py), killed at teardown."""
    yield from terminals_for(tmp_path)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    """A fresh `redis-server` on an ephemeral port, stopped at the end of the test."""
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.stop()
