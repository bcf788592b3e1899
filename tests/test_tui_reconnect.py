"""The client across a relay restart: reconnecting status, resume, offline queue, no doubles."""

from __future__ import annotations

import socket
from collections import Counter

import pytest

from tests.test_tui_app import SIZE, connected, has_line, lines, make_app, type_line, until
from tui.widgets.status_bar import StatusBar


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def status(app) -> str:
    return app.screen.query_one(StatusBar).state


def message_counts(app, room: str, *names: str) -> Counter[str]:
    """How often each message line appears (system and info lines left out)."""
    return Counter(
        line.split(" ", 1)[1]
        for line in lines(app, room)
        if any(line.split(" ", 2)[1:2] == [name] for name in names)
    )


@pytest.mark.parametrize(
    ("db", "gap"), [(None, False), (":memory:", True)], ids=["durable", "memory"]
)
async def test_relay_restart_resumes_without_missing_or_doubling(relay_factory, room, db, gap):
    port = free_port()
    args = ("--rate", "0") + (("--db", db) if db else ())
    first = relay_factory(*args, port=port)
    a, b = make_app(first, [room]), make_app(first, [room])
    async with a.run_test(size=SIZE) as pa, b.run_test(size=SIZE) as pb:
        await until(pa, lambda: connected(a, room) and connected(b, room), what="connect")
        name_a, name_b = a.identity.name, b.identity.name
        await type_line(pa, "before restart")
        await until(pb, lambda: has_line(b, room, "before restart"))

        first.stop()
        await until(pa, lambda: status(a) == "reconnecting", what="a reconnecting")
        await until(pb, lambda: status(b) == "reconnecting", what="b reconnecting")
        assert "reconnecting in" in str(a.screen.query_one(StatusBar).render())
        await type_line(pa, "typed while offline")
        assert has_line(a, room, "queued until reconnected: typed while offline")

        relay_factory(*args, port=port)
        await until(pa, lambda: status(a) == "connected", timeout=20, what="a back")
        await until(pb, lambda: status(b) == "connected", timeout=20, what="b back")
        await until(pb, lambda: has_line(b, room, f"{name_a} typed while offline"), what="queued")
        await type_line(pb, "after restart")
        await until(pa, lambda: has_line(a, room, f"{name_b} after restart"), what="live again")
        await until(pb, lambda: has_line(b, room, f"{name_b} after restart"))

        assert a.identity.name == name_a and b.identity.name == name_b
        expected = {
            f"{name_a} before restart": 1,
            f"{name_a} typed while offline": 1,
            f"{name_b} after restart": 1,
        }
        for app in (a, b):
            counts = message_counts(app, room, name_a, name_b)
            assert {k: counts[k] for k in expected} == expected, lines(app, room)
            assert sum(counts.values()) == 3, lines(app, room)
            assert any("could not be recovered" in line for line in lines(app, room)) is gap
