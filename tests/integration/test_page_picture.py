"""The page with everything on it at once, checked for layout faults and photographed
(`page.png` in the test's temporary directory; the README's picture is one of these)."""

import itertools
from pathlib import Path

from playwright.async_api import BrowserContext, Page

from tests.browser import DESKTOP, ChatPage
from tests.helpers import ApiClient, eventually, prompt

QUESTION = (
    "How do I print a greeting in Python?\n\n```python\nprint('hello, world')\n```\n\n"
    "Is **this** right?"
)


async def test_everything_on_one_page_fits_without_overlap(
    api: ApiClient, context: BrowserContext, tmp_path: Path
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(f"{QUESTION} {prompt('', tokens=30, reasoning=8)}")
    first = await chat.last_id("assistant")
    await chat.finished(first)
    await chat.message(first).locator("button.regenerate").click()
    again = await chat.last_id("assistant", not_=first)
    await chat.finished(again)
    await chat.send(f"And in *JavaScript*? {prompt('', tokens=80, reasoning=12, delay_ms=50)}")
    streaming = await chat.last_id("assistant", not_=again)
    await chat.words_shown(streaming, 12)
    await chat.message(streaming).locator("details.reasoning summary").click()

    page = chat.page
    row = page.locator(f'#conversation-list li.selected[data-id="{await chat.conversation_id()}"]')
    await row.wait_for()
    assert await page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]
    composer = await page.locator("#composer").bounding_box()
    assert composer and abs(composer["y"] + composer["height"] - DESKTOP["height"]) < 2, (
        "the message box sits at the bottom of the window"
    )
    await eventually(lambda: _no_overlap(page), what="messages laid out one below the other")
    await page.screenshot(path=tmp_path / "page.png")  # mid-stream, as a rule: Stop is showing
    await chat.finished(streaming)


async def _no_overlap(page: Page) -> bool:
    boxes = [await item.bounding_box() for item in await page.locator("article.message").all()]
    spans = [(box["y"], box["y"] + box["height"]) for box in boxes if box]
    return all(below[0] >= above[1] for above, below in itertools.pairwise(spans))
