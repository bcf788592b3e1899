"""The browser client in a real headless Chromium against real relays.

Two origins of one relay (127.0.0.1 and localhost) have separate localStorage, so the windows
opened on each are two different users in one browser.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from relay.store.sqlite import SQLiteStore
from shared.protocol import name_error, now_rfc3339
from tests.browser import Page, chromium  # noqa: F401 (the fixture)
from tests.relayproc import JsonClient, RelayProcess, closed

KEY = "browser-test-key"


def page_url(relay: RelayProcess, room: str, host: str = "127.0.0.1", query: str = "") -> str:
    return f"http://{host}:{relay.port}/{query}#{room}"


@pytest.fixture
def pages(chromium: Any):  # noqa: F811
    opened: list[Page] = []

    def open_page(url: str) -> Page:
        page = Page.open(chromium, url)
        opened.append(page)
        return page

    yield open_page
    for page in opened:
        page.close()


def no_alert(page: Page) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        page.focus().switch_to.alert  # noqa: B018 (raises when there is none)
    except NoAlertPresentException:
        return True
    return False


async def test_two_browsers_and_a_raw_client_talk_both_ways(relay, room, pages) -> None:
    alice = pages(page_url(relay, room))
    bob = pages(page_url(relay, room, host="localhost"))
    alice.live(room)
    bob.live(room)
    raw = await JsonClient.connect(relay.url(room))
    names = {alice.me, bob.me, raw.welcome["you"]}
    assert len(names) == 3

    alice.type("hello from alice")
    bob.wait_text(room, "hello from alice")
    seen = await raw.expect("message", text="hello from alice")
    assert seen["from"] == alice.me
    await raw.send(type="read", seq=seen["seq"])
    alice.wait(
        lambda: (
            raw.welcome["you"]
            in alice.js("return window.chatApp.tabs.get(arguments[0]).seen.textContent", room)
        ),
        "the seen-by line",
    )

    bob.type("and bob answers")
    alice.wait_text(room, "and bob answers")
    assert (await raw.expect("message", text="and bob answers"))["from"] == bob.me

    await raw.send(type="say", text="the terminal says hi")
    for page in (alice, bob):
        page.wait_text(room, "the terminal says hi")
        page.wait(lambda p=page: set(p.members()) == names, "members")
    assert alice.texts(room).count("hello from alice") == 1
    await raw.close()


CORPUS = [
    "<img src=x onerror=alert(1)>",
    "<script>window.__pwned = 1</script>",
    '<img src=x onerror="window.__pwned = 2">',
    "<svg onload=alert(3)></svg><b>bold</b> <a href='javascript:alert(4)'>link</a>",
    "[bold red]markup[/] **md** &lt;entity&gt; &amp;",
]
# Terminal escapes and bidi overrides: the relay refuses them (issue 9), but a database written
# before that rule still replays them, so the page must still show them harmlessly.
CONTROLS = [
    "\x1b[31mred\x1b[0m \x1b]52;c;ZXZpbA==\x07clip \x9b2J",
    "\u202eevil.exe\u202c txt \u2066isolate",
]


async def test_injection_corpus_shows_as_text_and_runs_nothing(relay, room, pages) -> None:
    raw = await JsonClient.connect(relay.url(room))
    await raw.send(type="topic", text="<img src=x onerror=alert(5)> topic")
    await raw.expect("topic")
    for text in CORPUS:
        await raw.send(type="say", text=text)
    page = pages(page_url(relay, room))
    page.live(room)
    page.wait(lambda: len(page.texts(room)) == len(CORPUS), "the corpus")
    assert page.texts(room) == CORPUS
    assert page.js("return document.getElementById('topic').textContent").startswith("<img")
    active = page.js(
        "return document.querySelectorAll('#panes img, #panes script, #panes svg, #panes a,"
        " #panes b, #topic *').length"
    )
    assert active == 0
    assert page.js("return window.__pwned === undefined")
    assert no_alert(page)
    await raw.close()


async def test_controls_are_refused_and_old_ones_show_harmlessly(
    relay_factory, room, pages, tmp_path
) -> None:
    db = tmp_path / "old.db"
    old = SQLiteStore(db)
    for seq, text in enumerate(CONTROLS, 1):
        message = {"type": "message", "room": room, "id": f"old-{seq}", "seq": seq}
        old.append(room, {**message, "ts": now_rfc3339(), "from": "oldbot", "text": text})
    old.close()
    relay = relay_factory("--db", str(db))
    page = pages(page_url(relay, room))
    page.live(room)
    page.wait(lambda: len(page.texts(room)) == len(CONTROLS), "the old messages")
    assert page.texts(room) == ["␛[31mred␛[0m ␛]52;c;ZXZpbA==␇clip \\x9b2J", CONTROLS[1]]
    bidi = page.js(
        "return getComputedStyle(document.querySelector('.pane.active .msg .text')).unicodeBidi"
    )
    assert bidi == "isolate"

    for text in CONTROLS:
        page.submit(text)
    refusals = page.wait(
        lambda: (lines := page.texts(room, ".error")) and len(lines) == len(CONTROLS) and lines,
        "the relay's refusals",
    )
    assert refusals[0].startswith("(not sent: text contains U+001B, a control character")
    assert refusals[0].endswith("␛[31mred␛[0m ␛]52;c;ZXZpbA==␇clip \\x9b2J")
    assert refusals[1].startswith("(not sent: text contains U+202E, a bidirectional")
    assert len(page.texts(room)) == len(CONTROLS)


async def test_reload_keeps_the_identity_and_a_nick(relay, room, pages) -> None:
    page = pages(page_url(relay, room))
    page.live(room)
    before = page.me
    page.focus().refresh()
    page.wait(lambda: page.js("return window.chatApp !== undefined"), "the app")
    page.live(room)
    assert page.me == before
    wanted = f"nick-{room}"
    page.type(f"/nick {wanted}")
    page.wait(lambda: page.me == wanted, "the new name")
    page.focus().refresh()
    page.wait(lambda: page.js("return window.chatApp !== undefined"), "the app")
    page.live(room)
    assert page.me == wanted


def test_nick_follows_the_relays_name_rule(relay, room, pages) -> None:
    """The page checks a new name as the relay does (ASCII, a letter first) and says why."""
    page = pages(page_url(relay, room))
    page.live(room)
    before = page.me
    check = "return import('/protocol.js').then((m) => m.nameError(arguments[0]))"
    for bad in ("élan", "9lives", "-dash", "\uff57ide"):
        assert page.js(check, bad) == name_error(bad), bad
    for good in ("alice", "Bob_2", "c.d-e"):
        assert page.js(check, good) is None, good
    page.type("/nick 9lives")
    page.wait_text(room, name_error("9lives"), ".error")
    assert page.me == before


async def test_relay_restart_resumes_without_gap_or_duplicate(relay_factory, room, pages) -> None:
    first = relay_factory()
    page = pages(page_url(first, room))
    page.live(room)
    raw = await JsonClient.connect(first.url(room))
    for n in range(1, 4):
        await raw.send(type="say", text=f"before {n}")
    page.wait_text(room, "before 3")
    await raw.close()
    first.stop()
    page.wait(lambda: page.state(room) == "resuming", "the drop")

    second = relay_factory(port=first.port)
    for n in range(1, 3):
        response = await asyncio.to_thread(
            httpx.post,
            f"{second.http}/rooms/{room}/messages",
            json={"from": "bot", "text": f"after {n}"},
        )
        assert response.status_code == 201
    page.wait_text(room, "after 2")
    page.live(room)
    assert page.texts(room) == ["before 1", "before 2", "before 3", "after 1", "after 2"]
    assert page.texts(room, ".gap") == []
    assert page.js("return window.chatApp.tabs.get(arguments[0]).recovered", room) is True


async def test_a_restart_that_lost_history_shows_the_gap(relay_factory, room, pages) -> None:
    first = relay_factory("--db", ":memory:")
    page = pages(page_url(first, room))
    page.live(room)
    page.type("before the restart")
    page.wait_text(room, "before the restart")
    first.stop()
    page.wait(lambda: page.state(room) == "resuming", "the drop")
    second = relay_factory("--db", ":memory:", port=first.port)
    # The browser saying the network is back cuts the backoff wait short.
    page.js("window.dispatchEvent(new Event('online'))")
    page.live(room)
    raw = await JsonClient.connect(second.url(room))
    await raw.send(type="say", text="after the restart")
    page.wait_text(room, "after the restart")
    lines = page.texts(room, ".msg, .gap")
    assert lines == [
        "before the restart",
        "some messages could not be recovered here",
        "after the restart",
    ]
    assert page.js("return window.chatApp.tabs.get(arguments[0]).recovered", room) is False
    await raw.close()


async def test_the_owner_kicks_and_closes_from_the_page(relay, room, pages) -> None:
    page = pages(page_url(relay, room))
    page.live(room)
    raw = await JsonClient.connect(relay.url(room))
    assert raw.welcome["owner"] == page.me
    page.type(f"/kick {raw.welcome['you']}")
    assert await closed(raw.ws) == (4001, f"kicked by {page.me}")
    page.wait_text(room, f"{raw.welcome['you']} was kicked by {page.me}", ".sys")
    page.type("/close")
    page.wait(lambda: page.state(room) == "offline", "the room to close")
    assert page.js("return window.chatApp.tabs.get(arguments[0]).stateDetail.detail", room) == (
        "the room was closed by its owner"
    )


async def test_dm_request_is_accepted_in_the_browser(relay, room, pages) -> None:
    page = pages(page_url(relay, room))
    page.live(room)
    raw = await JsonClient.connect(relay.url(room))
    me = page.me
    await raw.send(type="dm", to=me, text="psst, a secret")
    held = await raw.expect("dm")
    assert held.get("held") is True
    peer = f"@{raw.welcome['you']}"
    page.wait(lambda: page.texts(peer, ".request"), "the request line")
    assert page.texts(peer, ".msg") == []  # held until accepted
    page.js("window.chatApp.activate(arguments[0])", peer)
    page.js(
        "window.chatApp.tabs.get(arguments[0]).log.querySelector('.request button.accept').click()",
        peer,
    )
    assert (await raw.expect("dm_accepted"))["by"] == me
    page.wait_text(peer, "psst, a secret")
    page.type("happy to talk")
    answer = await raw.expect("dm")
    assert (answer["from"], answer["to"], answer["text"]) == (
        me,
        raw.welcome["you"],
        "happy to talk",
    )
    page.wait(lambda: page.texts(peer).count("happy to talk") == 1, "the echo, once")
    await raw.close()


async def test_announcement_is_shown_apart_from_messages(relay_factory, room, pages) -> None:
    relay = relay_factory("--key", KEY)
    page = pages(page_url(relay, room, query=f"?key={KEY}"))
    page.live(room)
    assert "key=" not in page.focus().current_url
    response = await asyncio.to_thread(
        httpx.post,
        f"{relay.http}/announce",
        json={"text": "<b>maintenance</b> at 18:00"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 201
    page.wait_text(room, "<b>maintenance</b> at 18:00", ".announce")
    assert page.texts(room) == []


async def test_history_loads_on_scroll_up_to_the_beginning(relay, room, pages) -> None:
    async with httpx.AsyncClient(base_url=relay.http) as http:
        for n in range(1, 161):
            await http.post(f"/rooms/{room}/messages", json={"from": "bot", "text": f"m{n}"})
    page = pages(page_url(relay, room))
    page.live(room)
    page.wait(lambda: len(page.texts(room)) == 50, "the replay")

    def scrolled_to_top() -> bool:
        page.js("window.chatApp.tabs.get(arguments[0]).log.scrollTop = 0", room)
        return bool(page.texts(room, ".start"))

    page.wait(scrolled_to_top, "the beginning of the room")
    assert page.texts(room) == [f"m{n}" for n in range(1, 161)]
    assert len(page.texts(room, ".day")) == 1


async def test_a_long_log_drops_its_oldest_lines_and_pages_them_back(relay, room, pages) -> None:
    page = pages(page_url(relay, room))
    page.live(room)
    page.js("window.chatApp.maxLines = 30; window.chatApp.trimLines = 10")
    async with httpx.AsyncClient(base_url=relay.http) as http:
        for n in range(1, 61):
            await http.post(f"/rooms/{room}/messages", json={"from": "bot", "text": f"m{n}"})
    page.wait_text(room, "m60")
    kept = page.texts(room)
    assert len(kept) <= 30 and kept[-1] == "m60"
    page.js("window.chatApp.maxLines = 100000")

    def scrolled_to_top() -> bool:
        page.js("window.chatApp.tabs.get(arguments[0]).log.scrollTop = 0", room)
        return bool(page.texts(room, ".start"))

    page.wait(scrolled_to_top, "the beginning of the room")
    assert page.texts(room) == [f"m{n}" for n in range(1, 61)]


async def test_unread_and_mention_counts_on_an_inactive_tab(relay, room, pages) -> None:
    other = f"{room}-other"
    page = pages(page_url(relay, f"{room},{other}"))
    page.live(room)
    page.live(other)
    raw = await JsonClient.connect(relay.url(other))
    await raw.send(type="say", text="just chatting")
    await raw.send(type="say", text=f"hey {page.me}, look")

    def badge() -> tuple[str, str] | None:
        found = page.js(
            "const b = window.chatApp.tabs.get(arguments[0]).button;"
            "const count = (c) => b.querySelector(c)?.textContent;"
            "return [count('.unread'), count('.mention')]",
            other,
        )
        return tuple(found) if found[0] == "2" else None

    assert page.wait(badge, "the counts") == ("2", "@1")
    page.js("window.chatApp.activate(arguments[0])", other)
    page.wait(lambda: badge() is None, "the counts to clear")
    marker = await raw.expect("read", timeout=10)
    assert marker["name"] == page.me
    await raw.close()


def test_phone_sized_screen_hides_members_behind_a_button(relay, room, pages) -> None:
    page = pages(page_url(relay, room))
    page.live(room)
    driver = page.focus()
    driver.set_window_size(390, 780)
    try:
        page.wait(
            lambda: page.js("return getComputedStyle(members).display") == "none", "narrow layout"
        )
        width = page.js("return document.documentElement.scrollWidth")
        assert width <= page.js("return window.innerWidth")
        page.js("document.getElementById('members-toggle').click()")
        assert page.js("return getComputedStyle(members).display") == "block"
        assert (
            page.js("return document.getElementById('input').getBoundingClientRect().width") > 200
        )
    finally:
        driver.set_window_size(1100, 700)


def test_a_relay_that_wants_a_key_gets_it_from_the_prompt(relay_factory, room, pages) -> None:
    relay = relay_factory("--key", KEY)
    page = pages(page_url(relay, room))
    page.wait(lambda: page.state(room) == "offline", "the relay's refusal")
    assert page.js("return !document.getElementById('key-form').hidden")
    assert page.js("return document.getElementById('key-reason').textContent") == (
        "access key required"
    )
    page.js("document.getElementById('key-input').value = arguments[0]", KEY)
    page.js("document.getElementById('key-form').requestSubmit()")
    page.live(room)
    assert page.js("return localStorage.getItem('chat.key')") == KEY
