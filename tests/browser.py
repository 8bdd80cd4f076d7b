"""The chat page in a real browser: Playwright driving Debian's Chromium (`apt-get install
chromium`; Playwright's own browser download is not used), and a driver that reads the page as
a user does: what each message shows, its status line, the buttons there are.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    ViewportSize,
    async_playwright,
)

from tests.helpers import eventually
from tests.infra import InfrastructureMissing

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
DESKTOP: ViewportSize = {"width": 1100, "height": 720}
PHONE: ViewportSize = {"width": 390, "height": 760}
WAIT_SECONDS = 20.0
HOSTILE = (
    '<script>window.pwned = "script"</script>\n\n'
    '<img src="x" onerror="window.pwned = \'img\'">\n\n'
    '[click me](javascript:window.pwned="link") and <b onmouseover="window.pwned=1">bold</b>'
)
"""Text that would run script if a page took it for HTML or trusted its links: typed by a user
or written by the model, the page must show it and run none of it."""


def chromium_installed() -> bool:
    return Path(CHROMIUM).exists()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not chromium_installed():
        raise InfrastructureMissing(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile per test: its own session storage, cookies and tabs."""
    fresh = await browser.new_context(viewport=DESKTOP)
    try:
        yield fresh
    finally:
        await fresh.close()


def words(text: str) -> list[str]:
    """Rendered Markdown trims and folds whitespace; the words themselves must match exactly."""
    return text.split()


class ChatPage:
    """One tab of the chat page, with every script error and dialog it raised recorded."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._on_dialog)
        self.confirm_answer = False

    @classmethod
    async def open(cls, context: BrowserContext, base_url: str, fragment: str = "") -> "ChatPage":
        chat = cls(await context.new_page())
        await chat.page.goto(f"{base_url}/{fragment}")
        return chat

    async def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        if dialog.type == "confirm" and self.confirm_answer:
            await dialog.accept()
        else:
            await dialog.dismiss()

    async def send(self, text: str) -> None:
        """Type into the message box and press Enter, as a user does."""
        box = self.page.locator("#message-box")
        await box.fill(text)
        await box.press("Enter")
        await eventually(
            lambda: self._box_empty(), WAIT_SECONDS, what="the message box to clear after sending"
        )

    async def _box_empty(self) -> bool:
        return await self.page.locator("#message-box").input_value() == ""

    async def conversation_id(self) -> str:
        async def from_url() -> str:
            fragment = await self.page.evaluate("location.hash")
            return str(fragment).removeprefix("#c=") if fragment.startswith("#c=") else ""

        return await eventually(from_url, WAIT_SECONDS, what="a conversation id in the URL")

    def messages(self, sender: str | None = None) -> Locator:
        return self.page.locator(f"article.message{'.' + sender if sender else ''}")

    def message(self, message_id: str) -> Locator:
        return self.page.locator(f'article.message[data-id="{message_id}"]')

    async def last_id(self, sender: str, not_: str = "") -> str:
        """The id of the last `sender` message shown (waiting for one other than `not_`)."""

        async def last() -> str:
            ids: list[str] = await self.messages(sender).evaluate_all(
                "items => items.map((item) => item.dataset.id)"
            )
            return ids[-1] if ids and ids[-1] != not_ else ""

        return await eventually(last, WAIT_SECONDS, what=f"a {sender} message on the page")

    async def text(self, message_id: str) -> str:
        return await self.message(message_id).locator(".body").inner_text()

    async def status(self, message_id: str) -> str:
        return await self.message(message_id).locator(".status").inner_text()

    async def state(self, message_id: str) -> str:
        return await self.message(message_id).get_attribute("data-status") or ""

    async def finished(self, message_id: str, timeout: float = WAIT_SECONDS) -> str:
        """Wait until the page shows the reply finished; return its status."""

        async def done() -> str:
            state = await self.state(message_id)
            return state if state in ("completed", "failed") else ""

        return await eventually(done, timeout, what=f"the page to show {message_id} finished")

    async def words_shown(self, message_id: str, at_least: int) -> list[str]:
        async def enough() -> list[str]:
            shown = words(await self.text(message_id))
            return shown if len(shown) >= at_least else []

        return await eventually(enough, WAIT_SECONDS, what=f"{at_least} words of {message_id}")

    async def follow(self, message_id: str, expected: list[str]) -> set[int]:
        """Watch a reply until it is finished: every text shown on the way must be a start of
        `expected` (a doubled or missing piece would not be). Returns the word counts seen."""
        seen: set[int] = set()
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            state = await self.state(message_id)
            shown = words(await self.text(message_id))
            assert shown == expected[: len(shown)], f"shown {shown} is not a start of {expected}"
            seen.add(len(shown))
            if state in ("completed", "failed"):
                return seen
            assert time.monotonic() < deadline, f"{message_id} did not finish; shown: {shown}"
            await asyncio.sleep(0.03)

    async def connection(self) -> str:
        return await self.page.locator("#connection").get_attribute("data-state") or ""

    async def evaluate(self, script: str) -> Any:
        return await self.page.evaluate(script)
