"""The client core without a socket or Textual: resume, replay, going live, answers by cid.

`RoomLink`'s protocol half is fed events by hand (`opened`, `receive`, `outgoing`, `closed`),
as the relay would send them, and its decisions are checked directly.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from shared.protocol import Event
from tui.client.commands import CommandError, parse
from tui.client.events import describe
from tui.client.link import Backoff, Identity, RoomLink, State, Status
from tui.client.room import RoomState


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Event, Event | None]] = []
        self.statuses: list[Status] = []

    def sink(self, event: Event, request: Event | None) -> None:
        self.events.append((event, request))

    def kinds(self) -> list[str]:
        return [str(event["type"]) for event, _ in self.events]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_link(clock: FakeClock | None = None) -> tuple[RoomLink, Recorder]:
    seen = Recorder()
    link = RoomLink(
        "ws://relay",
        "room",
        Identity(None, lambda _: None),
        seen.sink,
        seen.statuses.append,
        clock=clock or FakeClock(),
    )
    return link, seen


def welcome(epoch: str, seq: int, replay: int = 0, **extra: object) -> Event:
    return {
        "type": "welcome",
        "room": "room",
        "you": "me",
        "token": "t",
        "epoch": epoch,
        "seq": seq,
        "replay": replay,
        **extra,
    }


def message(seq: int, mid: str, replay: bool = False, **extra: object) -> Event:
    event: Event = {"type": "message", "id": mid, "seq": seq, "from": "bob", "text": mid}
    if replay:
        event["replay"] = True
    return {**event, **extra}


def connect(link: RoomLink, hello: Event, *replayed: Event) -> None:
    link.opened()
    link.receive(hello)
    for event in replayed:
        link.receive(event)


def test_first_connect_replays_the_backlog_then_goes_live():
    link, seen = make_link()
    connect(link, welcome("e1", 2, replay=2))
    assert not link.connected and link.outgoing() == []
    link.receive(message(1, "a", replay=True))
    assert not link.connected
    link.receive(message(2, "b", replay=True))
    assert link.connected and link.last_seq == 2
    assert seen.statuses[-1].state == State.CONNECTED
    assert link.url().endswith("?since=2&epoch=e1")


def test_an_empty_room_goes_live_at_the_welcome():
    link, _ = make_link()
    connect(link, welcome("e1", 7))
    assert link.connected and link.last_seq == 7


def test_new_epoch_replaying_shown_messages_still_goes_live_and_sends_once():
    """Bug 1: after a relay crash the new epoch replays messages already shown. They are not
    shown again, yet the replay must still count down to going live."""
    link, seen = make_link()
    connect(link, welcome("e1", 2, replay=2), message(1, "a", True), message(2, "b", True))
    link.closed()
    cid = link.say("typed while the relay was down")
    assert link.outgoing() == []
    connect(link, welcome("e2", 2, replay=2, recovered=False))
    link.receive(message(1, "a", replay=True))
    link.receive(message(2, "b", replay=True))
    assert link.connected
    assert [e["text"] for e, _ in seen.events if e["type"] == "message"] == ["a", "b"]
    sent = link.outgoing()
    assert [r.get("cid") for r in sent] == [cid]
    assert link.outgoing() == []
    # The next resume starts after the replay, in the new epoch: no second full replay.
    assert link.url().endswith("?since=2&epoch=e2")


def test_a_say_echoed_in_the_replay_is_not_sent_again():
    link, _ = make_link()
    connect(link, welcome("e1", 0))
    cid = link.say("hello")
    assert [r["cid"] for r in link.outgoing()] == [cid]
    link.closed()
    connect(link, welcome("e1", 1, replay=1, recovered=True))
    link.receive(message(1, "m1", replay=True, cid=cid, **{"from": "me"}))
    assert link.connected and link.outgoing() == [] and link.unsent == 0


def test_a_say_lost_with_the_socket_is_sent_again_before_later_requests():
    link, _ = make_link()
    connect(link, welcome("e1", 0))
    first = link.say("first")
    link.outgoing()
    link.closed()
    later = link.send({"type": "nick", "name": "new"})
    connect(link, welcome("e1", 0, recovered=True))
    assert [r["cid"] for r in link.outgoing()] == [first, later]


def test_errors_are_matched_by_cid_not_by_age():
    """Bug 6: `/accept nobody` then a message: the error names the accept, the say stays."""
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    accept = link.send({"type": "dm_accept", "from": "nobody"})
    say = link.say("hello")
    link.outgoing()
    error = {"type": "error", "code": "bad_request", "detail": "no", "request": "dm_accept"}
    link.receive({**error, "cid": accept})
    event, request = seen.events[-1]
    assert event["request"] == "dm_accept", "the relay's field is passed on untouched"
    assert request is not None and request["type"] == "dm_accept"
    assert link.unsent == 1
    link.receive(message(1, "m1", cid=say, **{"from": "me"}))
    assert link.unsent == 0 and link.idle


def test_a_refused_say_is_named_and_dropped():
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    link.say("ok")
    big = link.say("x" * 10)
    link.outgoing()
    link.receive({"type": "error", "code": "too_large", "detail": "big", "cid": big})
    _, request = seen.events[-1]
    assert request is not None and request["text"] == "x" * 10
    assert link.unsent == 1


@pytest.mark.parametrize("cid", [None, "unknown"])
def test_an_error_for_no_known_request_blames_nothing(cid):
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    link.say("stays")
    link.send({"type": "who"})
    link.outgoing()
    error: Event = {"type": "error", "code": "rate_limited", "detail": "slow"}
    if cid:
        error["cid"] = cid
    link.receive(error)
    assert seen.events[-1][1] is None
    assert link.unsent == 1 and not link.idle


def test_success_events_answer_the_request_they_belong_to():
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    who = link.send({"type": "who"})
    nick = link.send({"type": "nick", "name": "new"})
    link.outgoing()
    link.receive({"type": "nick", "old": "someone", "new": "else"})
    assert seen.events[-1][1] is None, "someone else's nick answers nothing"
    link.receive({"type": "nick", "old": "me", "new": "new"})
    assert seen.events[-1][1] is not None and seen.events[-1][1]["cid"] == nick
    assert link.identity.name == "new"
    link.receive({"type": "members", "members": ["new"], "cid": who})
    assert seen.events[-1][1] is not None and seen.events[-1][1]["cid"] == who
    assert link.idle


def test_silent_requests_are_followed_by_a_barrier_whose_answer_is_not_shown():
    """A request that succeeds silently is followed by a `who`: once it is answered, any
    error for the silent one has arrived, so `--plain` cannot exit before reporting it."""
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    decline = link.send({"type": "dm_decline", "from": "x"})
    link.send({"type": "nick", "name": "me"})
    link.mark_read(3)
    sent = link.outgoing()
    assert [r["type"] for r in sent] == ["dm_decline", "nick", "who", "read"]
    assert not link.idle
    link.receive({"type": "error", "code": "bad_request", "detail": "no", "cid": decline})
    assert seen.events[-1][1] is not None and seen.events[-1][1]["cid"] == decline
    link.receive({"type": "members", "members": ["me"], "cid": sent[2]["cid"]})
    assert seen.kinds() == ["welcome", "error"] and link.idle


def test_requests_in_flight_are_forgotten_with_their_socket():
    link, _ = make_link()
    connect(link, welcome("e1", 0))
    link.send({"type": "who"})
    link.outgoing()
    assert not link.idle
    link.closed()
    connect(link, welcome("e1", 0, recovered=True))
    assert link.idle


def test_messages_seen_twice_are_delivered_once():
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    link.receive(message(1, "a"))
    link.receive(message(1, "a"))
    assert seen.kinds() == ["welcome", "message"]


def test_backoff_starts_over_only_after_a_connection_stayed_live():
    clock = FakeClock()
    link, _ = make_link(clock)
    connect(link, welcome("e1", 0))
    clock.now += 1
    assert not link.closed(), "a connection that dropped at once does not end the outage"
    connect(link, welcome("e1", 0, recovered=True))
    clock.now += link.stable_after
    assert link.closed()


def test_backoff_grows_with_jitter_and_is_capped():
    backoff = Backoff(base=0.5, cap=4.0, rng=random.Random(1))
    delays = [backoff.delay(attempt) for attempt in range(8)]
    assert all(0.25 <= d <= 4.0 for d in delays)
    for attempt, delay in enumerate(delays):
        assert min(4.0, 0.5 * 2**attempt) / 2 <= delay <= min(4.0, 0.5 * 2**attempt)


def test_command_requests_are_the_same_for_every_front_end():
    assert parse("/msg bob hi there").request() == {"type": "dm", "to": "bob", "text": "hi there"}
    assert parse("/kick bob").request() == {"type": "kick", "name": "bob"}
    assert parse("/close").request() == {"type": "close"}
    assert parse("/accept").request(peer="ann") == {"type": "dm_accept", "from": "ann"}
    assert parse("/decline bob").request() == {"type": "dm_decline", "from": "bob"}
    assert parse("/who").request() == {"type": "who"}
    assert parse("/join x").request() is None
    for line, why in [("/accept", "usage"), ("/nick me", "already"), ("/nick a\tb", "name")]:
        with pytest.raises(CommandError, match=why):
            parse(line).request(me="me")


def test_events_read_the_same_in_every_front_end():
    error = {"type": "error", "code": "bad_request", "detail": "no pending request from x"}
    accept = {"type": "dm_accept", "from": "x", "cid": "c"}
    assert describe(error, accept) == "bad_request: no pending request from x (/accept x)"
    say = {"type": "say", "text": "hello\x1b[2J", "cid": "c"}
    assert describe(error, say) == "bad_request: no pending request from x (not sent: hello)"
    assert describe({"type": "kick", "by": "own", "name": "bob"}) == "own kicked bob"
    assert describe({"type": "message"}) is None


def test_room_state_first_join_resume_and_new_epoch():
    room = RoomState("lobby")
    first = room.apply(welcome("e1", 3, replay=0, members=["me", "bob"], read=2), "me")
    assert first.joined and not first.gap and room.members == {"me", "bob"}
    assert room.apply(message(3, "c", replay=True), "me").count, "past the marker: unread"
    assert not room.apply(message(2, "b", replay=True), "me").count, "read already"
    assert room.oldest_seq == 2
    resumed = room.apply(welcome("e1", 3, recovered=True, members=["me"], read=3), "me")
    assert not (resumed.joined or resumed.gap or resumed.seen)
    room.receipts.read_by("bob", 3)
    crashed = room.apply(welcome("e2", 3, recovered=False, members=["me"], read=0), "me")
    assert crashed.gap and crashed.seen and not crashed.joined
    assert (room.oldest_seq, room.history_done, room.receipts.readers) == (None, False, {})


def test_room_state_messages_presence_and_reads():
    room = RoomState("lobby")
    room.apply(welcome("e1", 0, members=["me"]), "me")
    own = room.apply(message(1, "a", **{"from": "me"}), "me")
    assert own.own and own.seen and not own.count
    mention = room.apply(message(2, "b", text="hey ME!"), "me")
    assert mention.mention and mention.live and mention.count
    assert room.count_unread(True, 2) and not room.count_unread(False, 3)
    assert (room.unread, room.mentioned) == (2, True)
    assert room.apply({"type": "read", "name": "me", "seq": 2}, "me").unread
    assert (room.unread, room.mentioned) == (1, False)
    assert room.apply({"type": "read", "name": "bob", "seq": 1}, "me").seen
    assert room.receipts.seen_by() == ["bob"]
    assert not room.apply({"type": "join", "name": "me"}, "me").show, "own second device"
    assert room.apply({"type": "join", "name": "ann"}, "me").members
    room.apply({"type": "nick", "old": "bob", "new": "robert"}, "me")
    assert room.receipts.seen_by() == ["robert"]
    room.apply({"type": "leave", "name": "ann"}, "me")
    assert room.members == {"me"}
    room.looked_at()
    assert (room.unread, room.mentioned, room.receipts.unread) == (0, False, [])


def test_room_state_history_pages_until_the_beginning():
    room = RoomState("lobby")
    room.apply(message(5, "e"), "me")
    page = {"type": "history", "messages": [message(n, str(n)) for n in (2, 3, 4, 5)]}
    assert room.history_request(100) == {"type": "history", "before": 5, "limit": 100}
    older = room.older(page)
    assert [m["seq"] for m in older] == [2, 3, 4]
    assert not room.paged(older, added=2), "a full log kept only the newest two"
    assert room.oldest_seq == 3
    older = room.older({"type": "history", "messages": [message(1, "1"), message(2, "2")]})
    assert room.paged(older, added=2) and room.history_done
    assert room.history_request(100) is None


def test_client_core_and_plain_import_no_textual():
    code = (
        "import sys, tui.client.link, tui.client.commands, tui.client.events, tui.client.room,"
        " tui.client.server, tui.plain;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'textual'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "[]"


def test_private_room_commands_are_requests_answered_by_their_events():
    """The relay answers private/invite/remove/owner with these events (relay/owners.py)."""
    assert parse("/private on").request() == {"type": "private", "private": True}
    assert parse("/invite bob").request() == {"type": "invite", "name": "bob"}
    assert parse("/logout-everywhere").request() == {"type": "logout_everywhere"}
    assert parse("/register").request() is None
    with pytest.raises(CommandError, match=r"usage: /private on\|off"):
        parse("/private maybe").request()
    link, seen = make_link()
    connect(link, welcome("e1", 0))
    cids = [
        link.send(request)
        for request in (
            {"type": "private", "private": True},
            {"type": "invite", "name": "bob"},
            {"type": "remove", "name": "bob"},
            {"type": "owner", "name": "bob"},
        )
    ]
    link.outgoing()
    link.receive({"type": "invited", "room": "room", "name": "me", "by": "other"})
    assert seen.events[-1][1] is None, "someone else's invite answers nothing"
    answers = [
        {"type": "private", "private": True, "by": "me"},
        {"type": "invited", "name": "bob", "by": "me"},
        {"type": "removed", "name": "bob", "by": "me"},
        {"type": "owner", "owner": "bob", "by": "me"},
    ]
    for cid, answer in zip(cids, answers, strict=True):
        link.receive({**answer, "room": "room"})
        assert seen.events[-1][1] is not None and seen.events[-1][1]["cid"] == cid
    assert link.idle
    assert describe(answers[1] | {"room": "room"}) == "me invited bob (#room)"
    assert describe({"type": "announce", "text": "tea\x1b[2J"}) == "announcement: tea"


def test_an_http_post_is_labelled_and_never_counts_as_ours():
    state = RoomState("lobby")
    effects = state.apply(message(1, "a", **{"from": "me", "via": "http"}), "me")
    assert not effects.own and effects.count
