"""What the page shows of the model's side of a reply: reasoning (collapsed), usage, finish."""

from pathlib import Path

from playwright.async_api import BrowserContext

from tests.browser import HOSTILE, ChatPage, words
from tests.helpers import ApiClient, eventually, prompt


async def test_reasoning_is_collapsed_and_usage_is_shown(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("think first", tokens=6, reasoning=20, delay_ms=60))
    reply_id = await chat.last_id("assistant")
    await eventually(lambda: _status_is(chat, reply_id, "thinking"), what="the reasoning first")
    await chat.finished(reply_id)
    stored = await api.message(await chat.conversation_id(), reply_id)
    assert stored.reasoning and stored.usage

    card = chat.message(reply_id)
    section = card.locator("details.reasoning")
    assert await section.is_visible()
    assert await section.get_attribute("open") is None, "the reasoning starts collapsed"
    assert not await section.locator(".reasoning-text").is_visible()
    await section.locator("summary").click()
    assert words(await section.locator(".reasoning-text").inner_text()) == words(stored.reasoning)
    assert words(await chat.text(reply_id)) == words(stored.message)

    usage = await card.locator(".usage").inner_text()
    assert f"{stored.usage.prompt_tokens} in" in usage
    assert f"{stored.usage.completion_tokens} out" in usage
    assert (usage.startswith("≈")) == stored.usage.estimated
    assert stored.model and stored.model in usage


async def _status_is(chat: ChatPage, message_id: str, status: str) -> bool:
    return await chat.status(message_id) == status


async def test_a_reply_cut_at_the_length_limit_says_so(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("cut short", tokens=4, finish="length"))
    reply_id = await chat.last_id("assistant")
    assert await chat.finished(reply_id) == "completed"
    assert await chat.status(reply_id) == "ended: length"


async def test_a_reply_without_reasoning_has_no_reasoning_section(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("no thinking", tokens=4))
    reply_id = await chat.last_id("assistant")
    await chat.finished(reply_id)
    assert await chat.message(reply_id).locator("details.reasoning").is_hidden()


async def test_html_and_script_from_the_model_are_shown_never_run(
    api: ApiClient, context: BrowserContext, tmp_path: Path
) -> None:
    """The model's reply and its reasoning both hold script, an `onerror` image and a
    `javascript:` link, streamed a word at a time: the page shows them as text, runs none."""
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("hostile model", text=HOSTILE, reasoning_text=HOSTILE, delay_ms=20))
    reply_id = await chat.last_id("assistant")
    await chat.finished(reply_id)
    stored = await api.message(await chat.conversation_id(), reply_id)
    assert (stored.message, stored.reasoning) == (HOSTILE, HOSTILE), "the model wrote it"

    card = chat.message(reply_id)
    body = card.locator(".body")
    shown = await body.inner_text()
    assert '<script>window.pwned = "script"</script>' in shown
    assert '<img src="x" onerror="window.pwned = \'img\'">' in shown
    assert "click me" in shown
    assert await body.locator("script, img, b").count() == 0
    await body.locator("a").click()
    await body.locator("b, a").first.hover()
    section = card.locator("details.reasoning")
    await section.locator("summary").click()
    assert await section.locator(".reasoning-text").text_content() == HOSTILE
    assert await section.locator("script, img, b, a").count() == 0
    await card.screenshot(path=tmp_path / "hostile-model.png")
    assert await chat.evaluate("window.pwned") is None
    assert await chat.page.locator('a[href^="javascript"]').count() == 0
    assert chat.dialogs == [] and chat.errors == []
