"""The browser client's files and headers, and what `serve` prints for newcomers (no browser)."""

from __future__ import annotations

import httpx
import pytest

from tests.browser import start_chromium
from tests.relayproc import RelayProcess


def _next_line(relay: RelayProcess) -> str:
    """The relay prints these lines at once after its address (bounded by pytest's timeout)."""
    assert relay.proc.stdout is not None
    return relay.proc.stdout.readline().decode()


def test_serve_prints_the_browser_url_and_the_tui_command(relay_factory) -> None:
    relay = relay_factory("--db", ":memory:")
    browser = _next_line(relay).strip()
    terminal = _next_line(relay).strip()
    assert browser == f"in a browser: http://127.0.0.1:{relay.port}/#lobby"
    assert terminal == f"in a terminal: chat-tui connect lobby --server ws://127.0.0.1:{relay.port}"
    page = httpx.get(browser.split(": ", 1)[1].split("#")[0], timeout=5)
    assert page.status_code == 200


def test_page_is_served_with_a_strict_content_security_policy(relay: RelayProcess) -> None:
    page = httpx.get(relay.http + "/", timeout=5)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="app.js">' in page.text
    policy = page.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == (
        f"'self' ws://127.0.0.1:{relay.port} wss://127.0.0.1:{relay.port}"
    )
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in policy and "*" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("path", "kind"),
    [("/app.js", "javascript"), ("/link.js", "javascript"), ("/style.css", "text/css")],
)
def test_client_files_are_served_with_the_policy(relay: RelayProcess, path: str, kind: str) -> None:
    response = httpx.get(relay.http + path, timeout=5)
    assert response.status_code == 200
    assert kind in response.headers["content-type"]
    assert "content-security-policy" in response.headers


def test_a_smuggled_host_header_does_not_reach_the_policy(relay: RelayProcess) -> None:
    headers = {"Host": "evil.example; script-src *"}
    response = httpx.get(relay.http + "/", headers=headers, timeout=5)
    assert "evil" not in response.headers["content-security-policy"]


def test_unknown_paths_are_still_404(relay: RelayProcess) -> None:
    assert httpx.get(relay.http + "/nope.js", timeout=5).status_code == 404
    assert httpx.get(relay.http + "/../pyproject.toml", timeout=5).status_code == 404


def test_without_chromium_browser_tests_skip_but_fail_under_ci(monkeypatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium"):
        start_chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="chromium"):
        start_chromium()
