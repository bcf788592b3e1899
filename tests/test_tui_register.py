"""Pilot tests of `/register`: a masked dialog, answered by the real relay."""

from __future__ import annotations

import httpx

from tests.test_tui_app import SIZE, connected, has_line, lines, make_app, type_line, until
from tui.screens.register import RegisterScreen
from tui.widgets.chat_input import ChatInput

PASSWORD = "tui-register-secret"
SHORT = "shrt7"


def dialog(app) -> RegisterScreen | None:
    screen = app.screen
    return screen if isinstance(screen, RegisterScreen) else None


async def type_password(pilot, password: str, again: str | None = None) -> None:
    await pilot.press(*password, "enter")
    await pilot.press(*(password if again is None else again), "enter")


async def test_register_in_a_masked_dialog_then_log_in_elsewhere(
    relay_factory, room, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    relay = relay_factory()  # its own relay: logins from 127.0.0.1 are throttled per address
    app = make_app(relay, [room], remember=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        name, first_token = app.identity.name, app.identity.token
        chat = app.screen
        await type_line(pilot, "/register")
        await until(pilot, lambda: dialog(app) is not None, what="the dialog")
        modal = dialog(app)
        assert modal is not None
        assert all(field.password for field in modal.query("Input"))

        await type_password(pilot, PASSWORD, again=PASSWORD + "x")
        assert "differ" in modal.status and modal.pending is None

        await type_password(pilot, SHORT)
        await until(pilot, lambda: "bad_password" in modal.status, what="the relay's refusal")

        await type_password(pilot, PASSWORD)
        await until(pilot, lambda: modal.done, what="registered")
        assert f"{name} is registered" in modal.status
        assert app.identity.token != first_token
        assert app.tokens is not None and app.tokens.get(app.config.server) == app.identity.token

        await pilot.press("escape")
        await until(pilot, lambda: app.screen is chat, what="the dialog closed")
        # A password typed on the chat line by mistake is refused and not kept.
        await type_line(pilot, f"/register {PASSWORD}")
        assert has_line(app, room, "/register takes no argument")

        shown = "\n".join(lines(app, room))
        history = chat.query_one(ChatInput).history
        for secret in (PASSWORD, SHORT):
            assert secret not in shown
            assert all(secret not in line for line in history.lines)
        assert history.lines == ["/register"]
    state = tmp_path / "state"
    for path in state.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            assert PASSWORD not in text and SHORT not in text, path

    async with httpx.AsyncClient(base_url=relay.http) as http:
        answer = await http.post("/login", json={"name": name, "password": PASSWORD})
        wrong = await http.post("/login", json={"name": name, "password": SHORT + "-wrong"})
    assert answer.status_code == 200 and answer.json()["name"] == name
    assert wrong.status_code == 401


async def test_register_without_a_connection_says_so_and_sends_nothing(relay_factory, room):
    relay = relay_factory()
    app = make_app(relay, [room])
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: connected(app, room), what="connect")
        relay.stop()
        await until(pilot, lambda: not connected(app, room), what="the relay gone")
        await type_line(pilot, "/register")
        await until(pilot, lambda: dialog(app) is not None, what="the dialog")
        modal = dialog(app)
        assert modal is not None
        await type_password(pilot, PASSWORD)
        assert "not connected" in modal.status and modal.pending is None
        await pilot.press("escape")
        await until(pilot, lambda: dialog(app) is None, what="the dialog closed")
        assert app.screen.links[room].unsent == 0
