"""The operator console in a real headless Chromium against a real `bridge serve`.

Set BRIDGE_TEST_SCREENSHOTS=DIR to keep the screenshots it takes (laptop and phone sizes).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.browser import Browser, chromium_path
from tests.http.support import ANA, API_TOKEN, Live, live_bridge

BEN = "34600000002"
HOSTILE = "<img src=x onerror=alert(1)>"
TEXTS = "[...document.querySelectorAll('#messages .text')].map(e => e.textContent)"


def js(value: str) -> str:
    return json.dumps(value)


async def click(browser: Browser, selector: str) -> None:
    found = await browser.evaluate(
        f"(() => {{ const e = document.querySelector({js(selector)}); if (e) e.click(); "
        "return !!e; })()"
    )
    assert found, selector


async def fill(browser: Browser, selector: str, value: str) -> None:
    await browser.evaluate(f"document.querySelector({js(selector)}).value = {js(value)}")


async def drive(live: Live, shots: Path) -> None:
    executable = chromium_path()
    assert executable is not None
    async with Browser(executable) as browser:
        await browser.navigate(f"http://127.0.0.1:{live.port}/console")
        await browser.wait_for("!document.getElementById('login').hidden", what="the login")
        # A wrong token is refused, and says so.
        await fill(browser, "#token", "not-the-token-at-all")
        await browser.evaluate("document.getElementById('login-form').requestSubmit()")
        await browser.wait_for(
            "document.getElementById('login-error').textContent.includes('not right')"
        )
        await fill(browser, "#token", API_TOKEN)
        await fill(browser, "#operator", "Ana")
        await browser.evaluate("document.getElementById('login-form').requestSubmit()")
        await browser.wait_for("!document.getElementById('app').hidden", what="the list")
        assert await browser.evaluate("sessionStorage.getItem('bridge.token')") == API_TOKEN

        # A delivery arrives: the conversation appears (the list polls).
        await asyncio.to_thread(live.say, HOSTILE, ANA, "María")
        row = f'#list button.conv[data-key="{ANA}"]'
        await browser.wait_for(f"!!document.querySelector({js(row)})", what="the conversation")
        await click(browser, row)
        await browser.wait_for(f"{TEXTS}.includes('Echo: ' + {js(HOSTILE)})", what="the reply")
        texts = await browser.evaluate(TEXTS)
        assert texts == [HOSTILE, f"Echo: {HOSTILE}"]  # shown literally, as text
        assert await browser.evaluate("document.querySelectorAll('#messages img').length") == 0
        assert await browser.evaluate("document.getElementById('chat-name').textContent") == "María"

        # Pause it (until resumed).
        await fill(browser, "#pause-for", "")
        await click(browser, "#pause")
        await browser.wait_for(
            "document.getElementById('chat-mode').textContent.startsWith('Paused')",
            what="the paused badge",
        )
        conversation = await asyncio.to_thread(live.conversation)
        assert conversation["mode"] == "paused" and conversation["set"]["by"] == "Ana"

        # Reply as a person.
        await fill(browser, "#reply", "Hola María, soy Ana. Te ayudo yo.")
        await browser.evaluate("document.getElementById('reply-form').requestSubmit()")
        await asyncio.to_thread(live.wait_sent, 2)
        assert live.graph.bodies()[-1] == "Hola María, soy Ana. Te ayudo yo."
        await browser.wait_for(
            "[...document.querySelectorAll('#messages .msg.operator .meta')]"
            ".some(e => e.textContent.includes('Ana') && e.textContent.includes('sent'))",
            what="the operator's message, sent",
        )
        assert await browser.evaluate("document.getElementById('reply').value") == ""

        # Another user writes while this one is open: their row says it is new.
        await asyncio.to_thread(live.say, "¿Tenéis envío a Canarias?", BEN, "Bea")
        new = f'#list button.conv[data-key="{BEN}"] .badge.new'
        await browser.wait_for(f"!!document.querySelector({js(new)})", what="the new badge")
        await browser.screenshot(shots / "console-laptop.png")

        # On a phone: one pane at a time.
        await browser.viewport(390, 844, mobile=True)
        await browser.wait_for("document.getElementById('list-pane').offsetWidth === 0")
        await browser.screenshot(shots / "console-phone-chat.png")
        await click(browser, "#back")
        await browser.wait_for("document.getElementById('list-pane').offsetWidth > 300")
        await browser.screenshot(shots / "console-phone-list.png")
        assert browser.dialogs == [], "a dialog opened: markup in a message ran"
        assert browser.console_errors == []


def test_console_logs_in_lists_pauses_and_replies_in_a_real_browser(tmp_path: Path) -> None:
    if chromium_path() is None:
        pytest.skip(
            "chromium is not installed and could not be: `make test` installs Debian's "
            "chromium package (apt-get install -y chromium)"
        )
    shots = tmp_path / "shots"
    shots.mkdir()
    with live_bridge(tmp_path) as live:
        asyncio.run(asyncio.wait_for(drive(live, shots), 60))
    for name in ("console-laptop.png", "console-phone-chat.png", "console-phone-list.png"):
        assert (shots / name).read_bytes().startswith(b"\x89PNG"), name
    keep = os.environ.get("BRIDGE_TEST_SCREENSHOTS")
    if keep:
        shutil.copytree(shots, keep, dirs_exist_ok=True)
