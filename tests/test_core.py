"""The hub without sockets: recording clients and a fake clock drive rooms, names and history."""

from __future__ import annotations

import json
from typing import Any

import pytest

from relay.cluster import Backplane
from relay.core import Client, Hub, Limits, Outgoing, PostError
from relay.store import MemoryStore, StoreUnavailable
from relay.tokens import TokenSigner


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder(Client):
    """Keeps what the hub delivers; `full` makes it refuse like a connection whose queue is full."""

    def __init__(self, json: bool = True) -> None:
        super().__init__(json)
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self.closed: tuple[int, str, bool] | None = None
        self.full = False

    def deliver(self, event: Outgoing) -> bool:
        if self.full:
            return False
        self.events.append(event.data)
        if event.plain is not None:
            self.lines.append(event.plain)
        return True

    def close(self, code: int, reason: str, flush: bool) -> None:
        self.closed = (code, reason, flush)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"] == kind]

    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def take(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events


def make_hub(clock: FakeClock | None = None, **limits: Any) -> Hub:
    limits = {"rate": 0.0, **limits}
    return Hub(
        MemoryStore(limits.get("history", 1000)),
        TokenSigner(b"test-secret"),
        Limits(**limits),
        clock=clock or FakeClock(),
    )


def joined(hub: Hub, room: str = "r", json: bool = True, **kwargs: Any) -> Recorder:
    client = Recorder(json)
    hub.join(client, room, **kwargs)
    return client


def say(hub: Hub, client: Recorder, text: str, **extra: Any) -> None:
    hub.receive(client, json.dumps({"type": "say", "text": text, **extra}))


def send(hub: Hub, client: Recorder, **request: Any) -> None:
    hub.receive(client, json.dumps(request))


# -- joining, names, welcome ----------------------------------------------------------------------


def test_welcome_then_own_join() -> None:
    hub = make_hub(backlog=7)
    alice = joined(hub)
    welcome, join = alice.events
    assert welcome["type"] == "welcome"
    assert welcome["room"] == "r"
    assert welcome["members"] == [welcome["you"]]
    assert welcome["seq"] == 0
    assert isinstance(welcome["epoch"], str) and welcome["epoch"]
    assert hub.signer.verify(welcome["token"]) is not None
    assert welcome["limits"]["max_message_bytes"] == 4096
    assert welcome["limits"]["history_page_max"] == 200
    assert join == {"type": "join", "room": "r", "name": welcome["you"], "ts": join["ts"]}


def test_plain_lines_for_join_message_leave() -> None:
    hub = make_hub()
    alice = joined(hub, json=False)
    bob = joined(hub, json=False)
    name_a, name_b = alice.user.name, bob.user.name
    hub.receive(alice, "hi :: there")
    hub.leave(bob)
    assert alice.lines == [
        f"{name_a} :: joined the chat",
        f"{name_b} :: joined the chat",
        f"{name_a} :: hi :: there",
        f"{name_b} :: left the chat",
    ]
    assert bob.lines == [f"{name_b} :: joined the chat", f"{name_a} :: hi :: there"]


def test_generated_names_are_unique() -> None:
    hub = make_hub()
    clients = [joined(hub, f"room{i % 3}") for i in range(200)]
    names = {client.user.name.casefold() for client in clients}
    assert len(names) == 200


def test_two_connections_of_one_user_join_and_leave_once() -> None:
    hub = make_hub()
    watcher = joined(hub)
    first = joined(hub)
    token = first.events[0]["token"]
    second = joined(hub, token=token)
    assert second.events[0]["you"] == first.user.name
    assert second.user is first.user
    assert [e["name"] for e in watcher.of("join")] == [watcher.user.name, first.user.name]
    assert second.of("join")[0]["name"] == first.user.name  # it still learns its name
    hub.leave(first)
    assert watcher.of("leave") == []
    hub.leave(second)
    assert [e["name"] for e in watcher.of("leave")] == [first.user.name]


def test_token_gives_same_name_after_reconnect_and_rename() -> None:
    hub = make_hub()
    alice = joined(hub)
    send(hub, alice, type="nick", name="alice")
    token = alice.events[0]["token"]
    hub.leave(alice)
    again = joined(hub, token=token)
    assert again.events[0]["you"] == "alice"


def test_token_name_held_by_someone_else_gets_a_fresh_name() -> None:
    clock = FakeClock()
    hub = make_hub(clock)
    alice = joined(hub)
    send(hub, alice, type="nick", name="alice")
    token = alice.events[0]["token"]
    hub.leave(alice)
    thief = joined(hub)
    send(hub, thief, type="nick", name="Alice")
    assert thief.last()["code"] == "name_taken"  # still alice's, for the grace period
    clock.now += hub.identities.name_grace
    send(hub, thief, type="nick", name="Alice")
    assert thief.user.name == "Alice"
    again = joined(hub, token=token)
    assert again.user.name.casefold() != "alice"


def test_forged_token_is_ignored() -> None:
    hub = make_hub()
    alice = joined(hub)
    token = alice.events[0]["token"]
    forged = joined(hub, token=token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert forged.user is not alice.user


def test_room_state_removed_but_history_kept() -> None:
    hub = make_hub()
    alice = joined(hub)
    say(hub, alice, "kept")
    epoch = alice.events[0]["epoch"]
    hub.leave(alice)
    assert "r" not in hub.rooms
    bob = joined(hub)
    welcome = bob.events[0]
    assert (welcome["seq"], welcome["epoch"], welcome["replay"]) == (1, epoch, 1)
    replayed = bob.events[1]
    assert (replayed["text"], replayed["replay"]) == ("kept", True)


# -- messages -------------------------------------------------------------------------------------


def test_message_fields_and_seq() -> None:
    hub = make_hub()
    alice = joined(hub)
    bob = joined(hub)
    bob.take()
    say(hub, alice, "one")
    say(hub, alice, "two", cid="c-2")
    one, two = bob.of("message")
    assert one["room"] == "r" and one["from"] == alice.user.name and one["text"] == "one"
    assert (one["seq"], two["seq"]) == (1, 2)
    assert one["id"] != two["id"]
    assert "cid" not in one and two["cid"] == "c-2"
    assert "replay" not in one
    assert alice.of("message") == [one, two]


def test_same_cid_is_posted_once() -> None:
    hub = make_hub()
    alice = joined(hub)
    bob = joined(hub)
    bob.take()
    say(hub, alice, "retry me", cid="abc")
    alice.take()
    say(hub, alice, "retry me", cid="abc")
    assert len(bob.of("message")) == 1
    echo = alice.last()
    assert echo["cid"] == "abc" and echo["seq"] == 1
    assert hub.store.room("r")[1] == 1


def test_cid_expires_after_ttl() -> None:
    clock = FakeClock()
    hub = make_hub(clock)
    alice = joined(hub)
    say(hub, alice, "once", cid="abc")
    clock.now += 301
    say(hub, alice, "twice", cid="abc")
    assert [m["seq"] for m in alice.of("message")] == [1, 2]


def test_bad_cid_is_bad_request() -> None:
    hub = make_hub()
    alice = joined(hub)
    say(hub, alice, "x", cid=5)
    assert alice.last()["code"] == "bad_request"
    say(hub, alice, "x", cid="c" * 65)
    assert alice.last()["code"] == "bad_request"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('"text"', "bad_json"),
        ('{"type": "shout", "text": "x"}', "unknown_type"),
        ('{"text": "x"}', "unknown_type"),
        ('{"type": 3}', "unknown_type"),
        ('{"type": "say", "text": 3}', "bad_request"),
        ('{"type": "say"}', "bad_request"),
        ('{"type": "nick", "name": ["x"]}', "bad_request"),
        ('{"type": "dm", "to": 1, "text": "x"}', "bad_request"),
        ('{"type": "history", "before": "x"}', "bad_request"),
        ('{"type": "history", "limit": 0}', "bad_request"),
        ('{"type": "history", "limit": true}', "bad_request"),
        ('{"type": "say", "text": "   "}', "empty"),
        ('{"type": "say", "text": ""}', "empty"),
    ],
)
def test_bad_input_answered_and_room_keeps_working(frame: str, code: str) -> None:
    hub = make_hub()
    alice = joined(hub)
    bob = joined(hub)
    bob.take()
    hub.receive(alice, frame)
    error = alice.last()
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    assert bob.events == []
    assert hub.metrics.errors[code] == 1
    say(hub, alice, "still here")
    assert bob.last()["text"] == "still here"
    assert alice.closed is None


def test_binary_frame_is_an_error() -> None:
    hub = make_hub()
    alice = joined(hub)
    hub.receive_binary(alice)
    assert alice.last()["code"] == "bad_frame"
    assert alice.closed is None


def test_too_large_json_and_plain() -> None:
    hub = make_hub(max_message_bytes=10)
    alice = joined(hub)
    plain = joined(hub, json=False)
    say(hub, alice, "é" * 6)  # 6 characters, 12 bytes
    assert alice.last()["code"] == "too_large"
    say(hub, alice, "é" * 5)
    assert alice.last()["type"] == "message"
    hub.receive(plain, "x" * 11)
    assert plain.lines[-1].startswith("* error too_large")
    hub.receive(plain, "x" * 10)
    assert plain.lines[-1] == f"{plain.user.name} :: {'x' * 10}"


# -- nick, dm, who, history -----------------------------------------------------------------------


def test_nick_announced_in_every_room_of_the_user() -> None:
    hub = make_hub()
    alice = joined(hub, "one")
    token = alice.events[0]["token"]
    elsewhere = joined(hub, "two", token=token)
    bob = joined(hub, "two")
    old = alice.user.name
    send(hub, alice, type="nick", name="alice")
    for client, room in ((alice, "one"), (elsewhere, "two"), (bob, "two")):
        nick = client.last()
        expected = ("nick", room, old, "alice")
        assert (nick["type"], nick["room"], nick["old"], nick["new"]) == expected
        assert "ts" in nick
    send(hub, bob, type="who")
    assert bob.last()["members"] == sorted(["alice", bob.user.name])


@pytest.mark.parametrize("name", ["", "a" * 33, "has space", "semi;colon", "new\nline"])
def test_nick_validation(name: str) -> None:
    hub = make_hub()
    alice = joined(hub)
    old = alice.user.name
    send(hub, alice, type="nick", name=name)
    assert alice.last()["code"] == "bad_name"
    assert alice.user.name == old


def test_nick_look_alikes_and_uniqueness() -> None:
    hub = make_hub()
    alice = joined(hub)
    bob = joined(hub)
    send(hub, alice, type="nick", name="Zoe_1.x-y")
    assert alice.user.name == "Zoe_1.x-y"
    send(hub, bob, type="nick", name="z0e_l.X-Y")
    assert bob.last()["code"] == "name_taken"
    send(hub, alice, type="nick", name="zoe_1.x-y")  # a user may change its own case
    assert alice.user.name == "zoe_1.x-y"


def test_dm_reaches_every_connection_of_both_sides() -> None:
    hub = make_hub()
    alice = joined(hub, "one")
    alice2 = joined(hub, "two", token=alice.events[0]["token"])
    bob = joined(hub, "three")
    bob2 = joined(hub, "four", token=bob.events[0]["token"])
    outsider = joined(hub, "one")
    send(hub, alice, type="dm", to=bob.user.name, text="may I?")
    send(hub, bob, type="dm_accept", **{"from": alice.user.name})
    outsider.take()
    send(hub, alice, type="dm", to=bob.user.name.upper(), text="psst")
    dms = [client.last() for client in (alice, alice2, bob, bob2)]
    assert all(dm == dms[0] for dm in dms)
    dm = dms[0]
    assert (dm["type"], dm["from"], dm["to"], dm["text"]) == (
        "dm",
        alice.user.name,
        bob.user.name,
        "psst",
    )
    assert dm["id"] and dm["ts"]
    assert outsider.events == []
    assert hub.store.room("one")[1] == 0


def test_dm_to_unknown_user() -> None:
    hub = make_hub()
    alice = joined(hub)
    send(hub, alice, type="dm", to="nobody-here", text="hello")
    assert alice.last()["code"] == "no_such_user"


def test_history_pages_backwards() -> None:
    hub = make_hub()
    alice = joined(hub)
    for i in range(1, 251):
        say(hub, alice, f"m{i}")
    send(hub, alice, type="history", before=101, limit=10)
    page = alice.last()
    assert page["type"] == "history" and page["room"] == "r"
    assert [m["seq"] for m in page["messages"]] == list(range(91, 101))
    send(hub, alice, type="history")
    assert [m["seq"] for m in alice.last()["messages"]] == list(range(51, 251))
    send(hub, alice, type="history", before=5, limit=1000)
    assert [m["seq"] for m in alice.last()["messages"]] == [1, 2, 3, 4]


# -- resume ---------------------------------------------------------------------------------------


def test_resume_replays_exactly_after_since() -> None:
    hub = make_hub()
    alice = joined(hub)
    for i in range(10):
        say(hub, alice, f"m{i}")
    epoch = alice.events[0]["epoch"]
    back = joined(hub, since=6, epoch=epoch, backlog=2)
    welcome = back.events[0]
    assert welcome["recovered"] is True and welcome["seq"] == 10
    replay = back.of("message")
    assert [m["seq"] for m in replay] == [7, 8, 9, 10]
    assert all(m["replay"] is True for m in replay)
    say(hub, alice, "live")
    live = back.last()
    assert live["seq"] == 11 and "replay" not in live
    up_to_date = joined(hub, since=11, epoch=epoch)
    assert up_to_date.events[0]["recovered"] is True and up_to_date.of("message") == []


def test_resume_with_other_epoch_is_not_recovered() -> None:
    hub = make_hub(backlog=3)
    alice = joined(hub)
    for i in range(10):
        say(hub, alice, f"m{i}")
    back = joined(hub, since=6, epoch="not-the-epoch")
    assert back.events[0]["recovered"] is False
    assert [m["seq"] for m in back.of("message")] == [8, 9, 10]


def test_resume_beyond_kept_history_is_not_recovered() -> None:
    hub = make_hub(history=5, backlog=50)
    alice = joined(hub)
    for i in range(10):
        say(hub, alice, f"m{i}")
    epoch = alice.events[0]["epoch"]
    back = joined(hub, since=3, epoch=epoch)
    assert back.events[0]["recovered"] is False
    assert [m["seq"] for m in back.of("message")] == [6, 7, 8, 9, 10]
    edge = joined(hub, since=5, epoch=epoch)
    assert edge.events[0]["recovered"] is True
    assert [m["seq"] for m in edge.of("message")] == [6, 7, 8, 9, 10]
    future = joined(hub, since=99, epoch=epoch)
    assert future.events[0]["recovered"] is False


# -- rate limit, slow consumers, HTTP posts -------------------------------------------------------


def test_rate_limit_refills_with_time() -> None:
    clock = FakeClock()
    hub = make_hub(clock, rate=1.0, burst=2)
    alice = joined(hub)
    say(hub, alice, "1")
    say(hub, alice, "2")
    say(hub, alice, "3")
    assert alice.last()["code"] == "rate_limited"
    clock.now += 1.0
    say(hub, alice, "4")
    assert alice.last()["text"] == "4"
    assert [m["text"] for m in alice.of("message")] == ["1", "2", "4"]
    assert alice.closed is None


def test_errors_name_the_request_they_answer() -> None:
    hub = make_hub()
    alice = joined(hub)
    send(hub, alice, type="say", text="", cid="c-7")
    send(hub, alice, type="nick", name="no spaces")
    send(hub, alice, type="bogus")
    errors = alice.of("error")
    assert [(e["code"], e.get("request"), e.get("cid")) for e in errors] == [
        ("empty", "say", "c-7"),
        ("bad_name", "nick", None),
        ("unknown_type", None, None),
    ]


def test_read_markers_cost_a_fifth_and_are_refused_quietly() -> None:
    hub = make_hub(FakeClock(), rate=1.0, burst=2)
    alice = joined(hub)
    say(hub, alice, "1")
    for _ in range(5):  # the one message's worth left pays for five reads
        send(hub, alice, type="read", seq=1)
    say(hub, alice, "2")  # refused: the budget is spent
    send(hub, alice, type="read", seq=2)  # refused, without an error event
    assert [event["seq"] for event in alice.of("read")] == [1]
    assert [event["code"] for event in alice.of("error")] == ["rate_limited"]


def test_read_marker_goes_to_own_devices_and_covered_authors() -> None:
    hub = make_hub()
    author = joined(hub)
    bystander = joined(hub)
    reader = joined(hub)
    reader_phone = joined(hub, token=reader.events[0]["token"])
    say(hub, author, "one")
    say(hub, bystander, "two")
    send(hub, reader, type="read", seq=1)
    assert [e["seq"] for e in author.of("read")] == [1]
    assert not bystander.of("read")
    assert [e["seq"] for e in reader_phone.of("read")] == [1]
    send(hub, reader, type="read", seq=2)
    assert [e["seq"] for e in bystander.of("read")] == [2]
    assert [e["seq"] for e in author.of("read")] == [1]


def test_malformed_reads_are_rate_limited() -> None:
    hub = make_hub(rate=1.0, burst=2)
    alice = joined(hub)
    for _ in range(3):
        send(hub, alice, type="read", seq="x")
    assert [e["code"] for e in alice.of("error")] == ["bad_request", "bad_request", "rate_limited"]


def test_sustained_flood_closes_only_the_flooder() -> None:
    clock = FakeClock()
    hub = make_hub(clock, rate=1.0, burst=2, flood_strikes=5)
    flooder = joined(hub)
    bob = joined(hub)
    for i in range(7):  # two within the burst, then five refusals are tolerated
        say(hub, flooder, f"f{i}")
    assert flooder.closed is None
    say(hub, flooder, "one too many")
    assert flooder.closed == (1008, flooder.closed[1], True)
    assert bob.last() == {**bob.last(), "type": "leave", "name": flooder.user.name}
    assert hub.metrics.floods == 1
    say(hub, bob, "fine")
    assert bob.last()["text"] == "fine"


def test_slow_consumer_dropped_others_served() -> None:
    hub = make_hub()
    slow = joined(hub)
    bob = joined(hub)
    slow.full = True
    say(hub, bob, "hello")
    assert slow.closed == (1013, slow.closed[1], False)
    assert hub.metrics.slow_consumers == 1
    assert slow.user.name not in hub.rooms["r"].member_names()
    assert [e["type"] for e in bob.take()][-2:] == ["message", "leave"]
    say(hub, bob, "again")
    assert bob.last()["text"] == "again"


def test_post_validates_and_fans_out() -> None:
    hub = make_hub(max_message_bytes=10)
    alice = joined(hub)
    plain = joined(hub, json=False)
    message = hub.post("r", "deploy-bot", "shipped")
    assert message["via"] == "http" and message["from"] == "deploy-bot"
    assert alice.last() == message
    assert plain.lines[-1] == "deploy-bot (via http) :: shipped"
    cases = [
        ("bad room", "bot", "x", "bad_room"),
        ("r", "bad name", "x", "bad_name"),
        ("r", alice.user.name.upper(), "x", "name_taken"),
        ("r", "bot", " ", "empty"),
        ("r", "bot", "x" * 11, "too_large"),
    ]
    for room, sender, text, code in cases:
        with pytest.raises(PostError) as refused:
            hub.post(room, sender, text)
        assert refused.value.code == code
    hub.post("nobody-here", "bot", "void")
    assert hub.store.before("nobody-here", None, 10)[0]["text"] == "void"
    assert "nobody-here" not in hub.rooms


def test_close_all_flushes_everyone() -> None:
    hub = make_hub()
    clients = [joined(hub, f"r{i}") for i in range(3)]
    hub.close_all(1001, "going away")
    assert all(client.closed == (1001, "going away", True) for client in clients)


def test_a_dm_from_another_node_for_someone_who_just_left_is_kept() -> None:
    hub = make_hub()
    dm = {"type": "dm", "id": "x-1", "from": "alice", "to": "bob", "text": "on its way"}
    # bob was on this node when alice's node sent it, and left before it arrived.
    hub.remote_user("s-bob", dm, "alice -> bob :: on its way", sender="s-alice")
    assert hub.store.held_dms("s-bob") == [("s-alice", dm)]
    # Not a DM (a request, an answer): nothing to keep.
    hub.remote_user("s-bob", {"type": "dm_accepted", "by": "carol"}, None)
    assert len(hub.store.held_dms("s-bob")) == 1


class OrderedAlone(Backplane):
    """A backplane that orders messages through the store, with no other node (a clock-free
    stand-in: the hub hands on only what `remote_message` brings)."""

    ordered = True


def test_a_joiner_after_the_history_was_reset_gets_the_new_room() -> None:
    hub = Hub(
        MemoryStore(), TokenSigner(b"test-secret"), Limits(rate=0.0), backplane=OrderedAlone()
    )
    first = joined(hub)
    old_epoch = first.events[0]["epoch"]
    # Another node closed the room (or Redis came back empty): the store starts it anew.
    hub.store.delete_room("r")
    second = joined(hub)
    assert first.closed is not None and first.closed[0] == 1012
    welcome = second.events[0]
    assert welcome["type"] == "welcome" and welcome["epoch"] != old_epoch
    assert hub.rooms["r"].clients == {second: None}


class FlakyStore(MemoryStore):
    """A shared store that cannot be asked while `down` (as a Redis that went away)."""

    down = False

    def after(self, room: str, seq: int) -> list[dict[str, Any]] | None:
        if self.down:
            raise StoreUnavailable("redis: gone")
        return super().after(room, seq)

    def room(self, room: str) -> tuple[str, int]:
        if self.down:
            raise StoreUnavailable("redis: gone")
        return super().room(room)


def test_a_gap_the_store_cannot_fill_now_is_filled_later_never_skipped() -> None:
    store = FlakyStore()
    hub = Hub(store, TokenSigner(b"test-secret"), Limits(rate=0.0), backplane=OrderedAlone())
    member = joined(hub)
    messages = []
    for n in (1, 2, 3):
        draft = {"type": "message", "room": "r", "id": f"m{n}", "seq": 0, "from": "x"}
        messages.append(store.add("r", {**draft, "text": f"t{n}"}))
    store.down = True
    # Only seq 3 arrives (1 and 2 were missed) while the store cannot say what they were.
    hub.remote_message("r", messages[2], "x :: t3", json.dumps(messages[2]))
    assert [e["seq"] for e in member.events if e["type"] == "message"] == []
    store.down = False
    hub.resync()
    assert [e["seq"] for e in member.events if e["type"] == "message"] == [1, 2, 3]


class Listed(OrderedAlone):
    """Another node still lists a member this node lost while Redis was away."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    def stale(self, here: set[tuple[str, str]]) -> list[tuple[str, str]]:
        return [pair for pair in [("r", "ghost"), *here] if pair not in here]

    def publish_room(
        self, room: str, event: dict[str, Any], plain: str | None, to: list[str] | None = None
    ) -> None:
        self.published.append((room, event))


def test_presence_left_behind_by_a_failed_leave_is_cleared_on_recovery() -> None:
    backplane = Listed()
    hub = Hub(MemoryStore(), TokenSigner(b"test-secret"), Limits(rate=0.0), backplane=backplane)
    joined(hub)
    backplane.published.clear()
    hub.present_again()
    leaves = [(room, e["name"]) for room, e in backplane.published if e["type"] == "leave"]
    assert leaves == [("r", "ghost")]
