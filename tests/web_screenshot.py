"""Screenshots of the browser client for the docs: `python -m tests.web_screenshot docs/`.

Runs the demo (fast-forwarded), opens its rooms in headless Chromium as `sam`, talks a little
and saves `web.png` (desktop) and `web-phone.png` (a phone-sized window).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tests.browser import Page, start_chromium
from tests.relayproc import JsonClient
from tests.test_demo import Demo


async def shoot(out: Path) -> None:
    demo = Demo(pace=0.15)
    driver = start_chromium()
    try:
        page = Page.open(driver, f"http://127.0.0.1:{demo.port}/#lobby,dev,random")
        driver.set_window_size(1200, 800)
        for room in ("lobby", "dev", "random"):
            page.live(room)
        page.type("/nick sam")
        page.wait(lambda: page.me == "sam", "the name")
        page.type("morning! first day here, hi everyone")
        page.type("chen, where do I find the standup notes?")
        page.wait(lambda: any("sam" in text for text in page.texts("lobby")[-3:]), "an answer")
        nina = await JsonClient.connect(f"ws://127.0.0.1:{demo.port}/chat/lobby?backlog=0")
        await nina.send(type="nick", name="nina")
        await nina.send(type="dm", to="sam", text="hey sam, welcome aboard! ping me for anything")
        page.wait(lambda: page.texts("@nina", ".request"), "the DM request")
        page.wait(lambda: len(page.texts("dev")) > 9, "talk in #dev")
        page.js("window.chatApp.activate('lobby')")
        page.js(
            "const days = window.chatApp.active.log.querySelectorAll('.day');"
            "days[days.length - 1].scrollIntoView({block: 'start'})"
        )
        page.focus().save_screenshot(str(out / "web.png"))
        driver.set_window_size(390, 780)
        page.wait(lambda: page.js("return innerWidth") < 500, "the phone layout")
        page.js("const t = window.chatApp.active; t.log.scrollTop = t.log.scrollHeight")
        page.focus().save_screenshot(str(out / "web-phone.png"))
        await nina.close()
    finally:
        driver.quit()
        demo.proc.send_signal(signal.SIGINT)
        demo.proc.wait(timeout=10)


if __name__ == "__main__":
    asyncio.run(shoot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")))
