"""A large offline DM queue: delivered in pages on reconnect, forgotten only once written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from relay.core import Hub
from relay.dms import HELD_PAGE_CHARS
from relay.store.sqlite import SQLiteStore
from tests.relayproc import JsonClient, RelayProcess, eventually
from tests.test_core import Recorder, joined, make_hub, send
from tests.test_dm import accepted_pair

DMS = 400
TEXT = 4000


async def test_reconnect_drains_an_offline_queue_larger_than_the_send_queue(
    relay_factory: Callable[..., RelayProcess],
) -> None:
    relay = relay_factory("--rate", "0")
    alice, bob = await accepted_pair(relay, "dms")
    token, bob_name = bob.welcome["token"], bob.welcome["you"]
    await bob.close()
    await alice.expect("leave", name=bob_name)
    for i in range(DMS):
        text = f"{i:04d} " + "x" * TEXT
        await alice.send(type="dm", to=bob_name, text=text)
        assert (await alice.expect("dm", text=text))["queued"] is True
    # 400 DMs of 4 KB: 1.6 MB, more than the 1 MiB send queue.
    back = await JsonClient.connect(relay.url("inbox", f"token={token}"), max_size=None)
    assert back.welcome["you"] == bob_name
    got = [(await back.expect("dm", timeout=10))["text"][:4] for _ in range(DMS)]
    assert got == [f"{i:04d}" for i in range(DMS)]
    await back.send(type="who")
    await back.expect("members")
    await back.close()
    again = await JsonClient.connect(relay.url("inbox", f"token={token}"))
    await again.send(type="who")
    await again.expect("members")
    assert not [event for event in again.seen if event["type"] == "dm"], "delivered twice"
    await again.close()
    await alice.close()
    async with httpx.AsyncClient(base_url=relay.http) as http:

        async def empty() -> bool | None:
            return (await http.get("/rooms")).json()["rooms"] == [] or None

        await eventually(empty)


class SlowSocket(Recorder):
    """A connection whose socket takes what is queued only when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Callable[[], None]] = []

    def when_written(self, callback: Callable[[], None]) -> None:
        self.waiting.append(callback)

    def write(self) -> None:
        self.waiting.pop(0)()


def accepted_then_away() -> tuple[Hub, Recorder, str, str]:
    """alice and bob in one room; bob accepts alice's DMs, then leaves: (hub, alice, bob, token)."""
    hub = make_hub()
    alice, bob = joined(hub, "r"), joined(hub, "r")
    bob_name, token = bob.of("welcome")[0]["you"], bob.of("welcome")[0]["token"]
    send(hub, alice, type="dm", to=bob_name, text="hi")
    send(hub, bob, type="dm_accept", **{"from": alice.of("welcome")[0]["you"]})
    hub.leave(bob)
    return hub, alice, bob_name, token


def test_held_dm_is_forgotten_only_once_written() -> None:
    hub, alice, bob_name, token = accepted_then_away()
    count = 3 * HELD_PAGE_CHARS // 1000
    for i in range(count):
        send(hub, alice, type="dm", to=bob_name, text=f"{i} " + "y" * 1000)
    subject = hub.signer.verify(token)
    assert subject is not None
    assert len(hub.store.held_dms(subject[0])) == count

    back = SlowSocket()
    hub.join(back, "r", token=token)
    first_page = len(back.of("dm"))
    assert 0 < first_page < count
    assert len(hub.store.held_dms(subject[0])) == count, "queued is not written"
    back.write()
    assert len(hub.store.held_dms(subject[0])) == count - first_page
    second_page = len(back.of("dm")) - first_page
    assert second_page > 0
    hub.leave(back)
    back.write()
    left = len(hub.store.held_dms(subject[0]))
    assert left == count - first_page - second_page
    assert not back.waiting, "no more pages for a connection that is gone"

    again = Recorder()
    hub.join(again, "r", token=token)
    texts = [event["text"].split()[0] for event in again.of("dm")]
    assert texts == [str(i) for i in range(count - left, count)]
    assert hub.store.held_dms(subject[0]) == []


def test_connection_dropped_before_its_welcome_leaves_no_member() -> None:
    hub, alice, bob_name, token = accepted_then_away()
    send(hub, alice, type="dm", to=bob_name, text="while you were out")
    stuck = Recorder()
    stuck.full = True
    hub.join(stuck, "r", token=token)
    assert stuck.closed is not None and stuck.closed[0] == 1013
    room = hub.rooms["r"]
    assert room.member_names() == [alice.of("welcome")[0]["you"]]
    assert stuck not in room.clients and hub.user_count() == 1
    hub.leave(alice)
    assert "r" not in hub.rooms


def test_sqlite_store_forgets_written_dms_by_id(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "chat.db")
    for i in range(5):
        store.hold_dm("bob", "alice", {"type": "dm", "id": f"d{i}", "text": str(i)})
    store.forget_dms("bob", ["d0", "d1", "d3"])
    store.close()
    reopened = SQLiteStore(tmp_path / "chat.db")
    assert [event["id"] for _, event in reopened.held_dms("bob")] == ["d2", "d4"]
    reopened.close()
