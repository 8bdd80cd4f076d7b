"""The chat page at `GET /`, driven in Chromium against the real stack.

Each test reads what a user sees (the text of each message, its status line, the buttons) and
compares it with what the API stored.
"""

import asyncio
import json
import re
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.async_api import BrowserContext, Page, Request, WebSocketRoute, expect

from tests.browser import HOSTILE, PHONE, WAIT_SECONDS, ChatPage, words
from tests.helpers import ApiClient, eventually, expected_reply, new_conversation_id, prompt
from tests.infra import Deployment

SLOW = {"delay_ms": 60}


async def stored_words(api: ApiClient, conversation_id: str, message_id: str) -> list[str]:
    return words((await api.message(conversation_id, message_id)).message)


async def test_the_page_is_served_with_a_policy_against_inline_script(api: ApiClient) -> None:
    response = await api.http.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert '<script type="module" src="/static/js/main.js">' in response.text
    for path in ("/static/js/main.js", "/static/vendor/marked/LICENSE"):
        assert (await api.http.get(path)).status_code == 200, path


async def test_a_reply_grows_token_by_token_then_matches_the_stored_text(
    api: ApiClient, context: BrowserContext, tmp_path: Path
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    question = prompt("grow", tokens=30, **SLOW)
    box = chat.page.locator("#message-box")
    await box.fill("first line")
    await box.press("Shift+Enter")
    await box.type(question)
    assert await box.input_value() == f"first line\n{question}", "Shift+Enter adds a line"
    await box.press("Enter")
    reply_id = await chat.last_id("assistant")
    await _shows_streaming(chat, reply_id)
    conversation_id = await chat.conversation_id()

    expected = words(expected_reply(f"first line\n{question}", 30))
    seen = await chat.follow(reply_id, expected)
    assert len(seen - {0, 30}) >= 3, f"the reply appeared all at once: word counts seen {seen}"
    assert await chat.state(reply_id) == "completed"
    stored = await api.message(conversation_id, reply_id)
    assert words(await chat.text(reply_id)) == words(stored.message) == expected
    user_id = await chat.last_id("user")
    assert (await api.message(conversation_id, user_id)).message == f"first line\n{question}"
    assert await chat.status(reply_id) == ""
    assert await chat.page.locator("#stop").is_hidden()
    assert chat.errors == []
    await chat.page.screenshot(path=tmp_path / "desktop.png")


async def _shows_streaming(chat: ChatPage, reply_id: str) -> None:
    """The reply's status line says so, visibly, while it streams."""
    label = chat.message(reply_id).locator(".status")
    await expect(label).to_have_text("streaming", timeout=WAIT_SECONDS * 1000)
    await expect(label).to_be_visible()


async def test_stop_ends_the_reply_and_keeps_its_text(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("stop me", tokens=400, **SLOW))
    reply_id = await chat.last_id("assistant")
    await chat.words_shown(reply_id, 3)
    await chat.page.locator("#stop").click()

    await chat.finished(reply_id)
    assert await chat.status(reply_id) == "stopped"
    stored = await api.message(await chat.conversation_id(), reply_id)
    assert stored.stopped and 3 <= len(words(stored.message)) < 400
    assert words(await chat.text(reply_id)) == words(stored.message)
    assert await chat.page.locator("#stop").is_hidden()


async def test_a_reload_mid_stream_shows_exactly_the_stored_text(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    question = prompt("reload", tokens=60, **SLOW)
    await chat.send(question)
    reply_id = await chat.last_id("assistant")
    await chat.words_shown(reply_id, 5)
    await chat.page.reload()
    await chat.words_shown(reply_id, 1)
    assert await chat.state(reply_id) == "streaming", "the reload came back mid-stream"
    await _shows_streaming(chat, reply_id)

    await chat.follow(reply_id, words(expected_reply(question, 60)))
    conversation_id = await chat.conversation_id()
    assert words(await chat.text(reply_id)) == await stored_words(api, conversation_id, reply_id)
    assert words(await chat.text(reply_id)) == words(expected_reply(question, 60))


async def test_two_tabs_show_the_same_conversation_live(
    api: ApiClient, api_b: ApiClient, context: BrowserContext
) -> None:
    conversation_id = new_conversation_id()
    first = await ChatPage.open(context, api.base_url, f"#c={conversation_id}")
    second = await ChatPage.open(context, api_b.base_url, f"#c={conversation_id}")
    for tab in (first, second):
        await eventually(partial(_live, tab), what="both tabs live")
    question = prompt("two tabs", tokens=20, **SLOW)
    await first.send(question)

    reply_id = await second.last_id("assistant")
    await second.finished(reply_id)
    await first.finished(reply_id)
    stored = await stored_words(api, conversation_id, reply_id)
    assert words(await first.text(reply_id)) == words(await second.text(reply_id)) == stored
    user_id = await second.last_id("user")
    assert await second.text(user_id) == question


async def test_html_and_script_in_text_are_shown_never_run(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(HOSTILE)
    user_id = await chat.last_id("user")
    reply_id = await chat.last_id("assistant")
    await chat.finished(reply_id)

    body = chat.message(user_id).locator(".body")
    shown = await body.inner_text()
    assert '<script>window.pwned = "script"</script>' in shown
    assert '<img src="x" onerror="window.pwned = \'img\'">' in shown
    assert await body.locator("script, img, b").count() == 0
    await body.locator("a").click()
    await body.locator("b, a").first.hover()
    assert await chat.evaluate("window.pwned") is None
    assert await chat.page.locator('a[href^="javascript"]').count() == 0
    assert chat.dialogs == [] and chat.errors == []


async def test_markdown_is_rendered_and_code_blocks_copy(
    api: ApiClient, context: BrowserContext
) -> None:
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    chat = await ChatPage.open(context, api.base_url)
    await chat.send("Some **bold** text and a block:\n\n```python\nprint('hi')\n```")
    user_id = await chat.last_id("user")
    body = chat.message(user_id).locator(".body")
    assert await body.locator("strong").inner_text() == "bold"
    assert (await body.locator("pre code").inner_text()).strip() == "print('hi')"
    await body.locator("pre button.copy").click()
    assert await chat.evaluate("navigator.clipboard.readText()") == "print('hi')\n"


async def test_docs_load_swagger_ui_from_the_project_only(
    api: ApiClient, context: BrowserContext
) -> None:
    page = await context.new_page()
    foreign: list[str] = []
    api_host = urlsplit(api.base_url).netloc

    def check(request: Request) -> None:
        if urlsplit(request.url).netloc not in (api_host, ""):
            foreign.append(request.url)

    page.on("request", check)
    await page.goto(f"{api.base_url}/docs")
    await page.locator(".swagger-ui .info .title").wait_for()
    assert "Streaming chat API" in await page.locator(".swagger-ui .info .title").inner_text()
    await page.locator("text=/chat").first.wait_for()
    assert foreign == []


async def test_the_page_fits_a_phone(
    api: ApiClient, context: BrowserContext, tmp_path: Path
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.page.set_viewport_size(PHONE)
    await chat.send(prompt("phone", tokens=12))
    reply_id = await chat.last_id("assistant")
    await chat.finished(reply_id)
    page = chat.page
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "no sideways scrolling"
    for selector in ("#message-box", "#send", f'[data-id="{reply_id}"]'):
        box = await page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], selector
    assert await page.locator("#new-chat").is_hidden() or not await _in_view(page, "#new-chat")
    await page.locator("#menu").click()
    await eventually(lambda: _in_view(page, "#new-chat"), what="the menu to open")
    await page.screenshot(path=tmp_path / "phone.png")
    await page.mouse.click(PHONE["width"] - 10, PHONE["height"] // 2)
    await eventually(lambda: _out_of_view(page, "#new-chat"), what="a tap beside it to close it")


async def _out_of_view(page: Page, selector: str) -> bool:
    return not await _in_view(page, selector)


async def _in_view(page: Page, selector: str) -> bool:
    box = await page.locator(selector).bounding_box()
    return bool(box and box["x"] >= 0)


async def test_the_page_reconnects_after_the_api_restarts(
    stack: Deployment, api: ApiClient, context: BrowserContext
) -> None:
    process, url = await asyncio.to_thread(stack.stack.start_api, name="page-restart-api")
    port = urlsplit(url).port
    assert port is not None
    try:
        chat = await ChatPage.open(context, url)
        question = prompt("restart", tokens=120, delay_ms=50)
        await chat.send(question)
        reply_id = await chat.last_id("assistant")
        before = await chat.words_shown(reply_id, 5)
        await asyncio.to_thread(process.stop)
        await eventually(lambda: _reconnecting(chat), what="the page to notice the API is gone")
        process, _ = await asyncio.to_thread(
            stack.stack.start_api, port=port, name="page-restart-api-again"
        )
        await eventually(lambda: _live(chat), what="the page to reconnect")
        assert await chat.state(reply_id) == "streaming", "reconnected while the reply streams"
        assert words(await chat.text(reply_id))[: len(before)] == before

        await chat.follow(reply_id, words(expected_reply(question, 120)))
        conversation_id = await chat.conversation_id()
        assert words(await chat.text(reply_id)) == await stored_words(
            api, conversation_id, reply_id
        )
        assert words(await chat.text(reply_id)) == words(expected_reply(question, 120))
    finally:
        await asyncio.to_thread(process.stop)


async def _reconnecting(chat: ChatPage) -> bool:
    return await chat.connection() == "reconnecting"


async def _live(chat: ChatPage) -> bool:
    return await chat.connection() == "live"


async def test_an_unknown_conversation_in_the_url_opens_empty(
    api: ApiClient, context: BrowserContext
) -> None:
    conversation_id = new_conversation_id()
    chat = await ChatPage.open(context, api.base_url, f"#c={conversation_id}")
    await eventually(lambda: _live(chat), what="the stream to open")
    assert await chat.messages().count() == 0
    async with httpx.AsyncClient(base_url=api.base_url) as http:
        assert (await http.get(f"/conversations/{conversation_id}/messages")).status_code == 404


async def test_a_failed_reply_shows_its_error(api: ApiClient, context: BrowserContext) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("fail", tokens=10, fail_after=3))
    reply_id = await chat.last_id("assistant")

    assert await chat.finished(reply_id) == "failed"
    stored = await api.message(await chat.conversation_id(), reply_id)
    assert stored.error
    assert await chat.status(reply_id) == f"failed: {stored.error}"
    assert words(await chat.text(reply_id)) == words(stored.message)


async def test_a_repeated_delta_is_skipped_and_a_missed_one_brings_a_fresh_snapshot(
    api: ApiClient, context: BrowserContext
) -> None:
    """The first socket repeats one delta and loses another, as a faulty network path might;
    the page must show neither a doubled word nor a hole, by `seq` alone."""
    page = await context.new_page()
    sockets: list[str] = []
    tampered: list[int] = []

    def route(socket: WebSocketRoute) -> None:
        sockets.append(socket.url)
        server = socket.connect_to_server()
        first = len(sockets) == 1

        def relay(text: str | bytes) -> None:
            frame = json.loads(text)
            if first and frame.get("type") == "message.delta" and frame["seq"] in (3, 6):
                tampered.append(frame["seq"])
                if frame["seq"] == 3:
                    socket.send(text)  # repeated: the page must skip the copy
                else:
                    return  # lost: seq 7 then shows the gap
            socket.send(text)

        server.on_message(relay)

    await page.route_web_socket(re.compile(r"/stream"), route)
    chat = ChatPage(page)
    await page.goto(api.base_url)
    question = prompt("tampered", tokens=30, delay_ms=40)
    await chat.send(question)
    reply_id = await chat.last_id("assistant")

    await chat.follow(reply_id, words(expected_reply(question, 30)))
    assert tampered == [3, 6], "the first socket saw deltas 3 and 6"
    assert len(sockets) >= 2, "the gap made the page reconnect"
    stored = await stored_words(api, await chat.conversation_id(), reply_id)
    assert words(await chat.text(reply_id)) == stored == words(expected_reply(question, 30))


async def test_send_now_interrupts_the_reply_being_written(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.page.set_viewport_size(PHONE)
    await chat.send(prompt("long answer", tokens=400, **SLOW))
    first_reply = await chat.last_id("assistant")
    await chat.words_shown(first_reply, 2)
    send_now = chat.page.locator("#send-now")
    box = await send_now.bounding_box()
    assert box and box["x"] + box["width"] <= PHONE["width"], "Send now fits a phone"
    question = prompt("instead", tokens=5)
    await chat.page.locator("#message-box").fill(question)
    await send_now.click()

    second_reply = await chat.last_id("assistant", not_=first_reply)
    assert await chat.finished(second_reply) == "completed"
    assert await chat.finished(first_reply) == "completed"
    assert await chat.status(first_reply) == "stopped"
    stored = await api.message(await chat.conversation_id(), first_reply)
    assert stored.stopped and len(words(stored.message)) < 400
    assert words(await chat.text(second_reply)) == words(expected_reply(question, 5))
    assert await send_now.is_hidden()
