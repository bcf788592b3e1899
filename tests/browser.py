"""A real headless Chromium (Debian's, through chromedriver and Selenium) for the web client.

Nothing is downloaded at run time: the browser and the driver are the system's
(`apt-get install chromium chromium-driver`, done by .ci/run). Without them the browser tests
are skipped on a developer's machine and fail under CI=true, so CI cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

T = TypeVar("T")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1100,700",
)
WAIT = 15.0


def _missing(what: str) -> None:
    message = f"browser tests need {what} (apt-get install chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def start_chromium() -> Any:
    """A fresh Chromium with its own profile; the caller quits it."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium (pip install -e '.[dev]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if binary is None:
        _missing("chromium")
    if driver is None:
        _missing("chromedriver")
    # Selenium Manager would otherwise look for a driver and a browser to download.
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(prefix='chat-chromium-')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One browser per test module; tests open windows in it."""
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """One window of the shared browser, on one origin (so one localStorage, one identity).

    Selenium talks to one window at a time: every method switches to this one first.
    """

    def __init__(self, driver: Any, handle: str) -> None:
        self.driver = driver
        self.handle = handle

    @classmethod
    def open(cls, driver: Any, url: str) -> Page:
        driver.switch_to.new_window("window")
        page = cls(driver, driver.current_window_handle)
        driver.get(url)
        page.wait(lambda: page.js("return window.chatApp !== undefined"), "the app to start")
        return page

    def focus(self) -> Any:
        if self.driver.current_window_handle != self.handle:
            self.driver.switch_to.window(self.handle)
        return self.driver

    def js(self, script: str, *args: Any) -> Any:
        return self.focus().execute_script(script, *args)

    def wait(self, check: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
        from selenium.webdriver.support.ui import WebDriverWait

        self.focus()
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda _: check())
        except Exception as error:
            logs = "\n".join(str(entry) for entry in self.console())
            raise AssertionError(f"timed out waiting for {what}\nconsole:\n{logs}") from error

    def console(self) -> list[dict[str, Any]]:
        return list(self.focus().get_log("browser"))

    def type(self, line: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        field = self.focus().find_element(By.ID, "input")
        field.send_keys(line + Keys.ENTER)

    def submit(self, line: str) -> None:
        """Send a line as typed, without keyboard emulation (for text no keyboard can type)."""
        self.js(
            "const input = document.getElementById('input');"
            "input.value = arguments[0];"
            "document.getElementById('compose').requestSubmit();",
            line,
        )

    @property
    def me(self) -> str | None:
        return self.js("return window.chatApp.me")

    def state(self, room: str) -> str | None:
        return self.js("return window.chatApp.tabs.get(arguments[0])?.state ?? null", room)

    def live(self, room: str) -> None:
        self.wait(lambda: self.state(room) == "live", f"#{room} to be live")

    def texts(self, key: str, selector: str = ".msg") -> list[str]:
        """The text of each matching line of a tab's log (its message text only for .msg)."""
        return self.js(
            "const tab = window.chatApp.tabs.get(arguments[0]);"
            "if (!tab) return [];"
            "return [...tab.log.querySelectorAll(arguments[1])].map("
            "  (line) => (line.querySelector('.text') ?? line).textContent);",
            key,
            selector,
        )

    def members(self) -> list[str]:
        """The member list as shown (for the active tab)."""
        return self.js(
            "return [...document.querySelectorAll('#member-list li')].map((li) => li.textContent)"
        )

    def wait_text(self, key: str, text: str, selector: str = ".msg") -> None:
        self.wait(lambda: text in self.texts(key, selector), f"{text!r} in {key}")

    def close(self) -> None:
        self.focus().close()
        handles = self.driver.window_handles
        if handles:
            self.driver.switch_to.window(handles[0])
