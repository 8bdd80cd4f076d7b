"""The page's conversation list: newest first, more on scroll, open, rename (in Chromium)."""

from functools import partial

from playwright.async_api import BrowserContext

from tests.browser import ChatPage, words
from tests.helpers import ApiClient, eventually, prompt

PAGE = 20


async def all_conversation_ids(api: ApiClient) -> list[str]:
    ids: list[str] = []
    before = None
    while True:
        params = {"limit": "100", **({"before": before} if before else {})}
        response = await api.http.get("/conversations", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        ids += [item["conversationId"] for item in body["conversations"]]
        before = body["next"]
        if before is None:
            return ids


async def listed_ids(chat: ChatPage) -> list[str]:
    rows = chat.page.locator("#conversation-list li.conversation")
    ids: list[str] = await rows.evaluate_all("rows => rows.map((row) => row.dataset.id)")
    return ids


async def test_the_list_is_newest_first_and_grows_on_scroll(
    api: ApiClient, context: BrowserContext
) -> None:
    while len(await all_conversation_ids(api)) <= PAGE + 2:
        await api.post_chat(prompt("filler", tokens=2))
    questions = [prompt(f"list {n}", tokens=3) for n in range(3)]
    created = [(await api.ask(question))[0].conversation_id for question in questions]

    chat = await ChatPage.open(context, api.base_url)
    await eventually(lambda: _count(chat, at_least=3), what="the list to load")
    shown = await listed_ids(chat)
    assert shown[:3] == created[::-1], "the newest conversation comes first"
    top = chat.page.locator("#conversation-list li.conversation").first.locator(".title")
    title = await top.get_attribute("title") or ""
    assert title and questions[-1].startswith(title), "the title is the first user message's start"

    expected = await all_conversation_ids(api)
    assert len(shown) < len(expected), "the first page does not load everything"

    async def scrolled_to_the_end() -> bool:
        await chat.page.locator("#conversation-list").evaluate("list => list.scrollTo(0, 1e9)")
        return len(await listed_ids(chat)) >= len(expected)

    await eventually(scrolled_to_the_end, what="more conversations to load on scroll")
    assert await listed_ids(chat) == expected


async def _count(chat: ChatPage, at_least: int) -> bool:
    return len(await listed_ids(chat)) >= at_least


async def test_a_conversation_opens_from_the_list_and_can_be_renamed(
    api: ApiClient, context: BrowserContext
) -> None:
    question = prompt("open me", tokens=5)
    accepted, reply = await api.ask(question)
    conversation_id = accepted.conversation_id
    chat = await ChatPage.open(context, api.base_url)
    row = chat.page.locator(f'#conversation-list li[data-id="{conversation_id}"]')
    await row.locator(".title").click()

    await chat.finished(reply.id)
    assert words(await chat.text(reply.id)) == words(reply.message)
    assert await chat.text(accepted.user_message_id) == question
    assert await chat.conversation_id() == conversation_id

    await row.locator("button.rename").click()
    box = row.locator("input.rename-box")
    await box.fill("Renamed from the page")
    await box.press("Enter")
    await eventually(lambda: _titled(chat, conversation_id, "Renamed from the page"))
    stored = (await api.http.get(f"/conversations/{conversation_id}")).json()
    assert stored["title"] == "Renamed from the page"

    await chat.page.reload()
    await eventually(lambda: _titled(chat, conversation_id, "Renamed from the page"))


async def _titled(chat: ChatPage, conversation_id: str, title: str) -> bool:
    row = chat.page.locator(f'#conversation-list li[data-id="{conversation_id}"] .title')
    return await row.count() == 1 and await row.get_attribute("title") == title


async def test_deleting_a_conversation_clears_it_from_every_tab(
    api: ApiClient, api_b: ApiClient, context: BrowserContext
) -> None:
    accepted = await api.post_chat(prompt("delete me", tokens=400, delay_ms=50))
    conversation_id = accepted.conversation_id
    fragment = f"#c={conversation_id}"
    first = await ChatPage.open(context, api.base_url, fragment)
    second = await ChatPage.open(context, api_b.base_url, fragment)
    for tab in (first, second):
        await tab.words_shown(accepted.message_id, 2)
    row = first.page.locator(f'#conversation-list li[data-id="{conversation_id}"]')

    await row.locator("button.delete").click()  # the confirmation is dismissed: nothing happens
    assert first.dialogs and first.dialogs[-1].startswith("confirm")
    assert (await api.http.get(f"/conversations/{conversation_id}")).status_code == 200
    first.confirm_answer = True
    await row.locator("button.delete").click()

    await eventually(lambda: _gone(first, conversation_id), what="the row to go")
    for tab in (first, second):
        await eventually(partial(_cleared, tab), what="the conversation to leave the tab")
    notice = second.page.locator("#error .text")
    assert await notice.inner_text() == "This conversation was deleted."
    assert (await api.http.get(f"/conversations/{conversation_id}")).status_code == 404


async def _gone(chat: ChatPage, conversation_id: str) -> bool:
    return conversation_id not in await listed_ids(chat)


async def _cleared(chat: ChatPage) -> bool:
    return (
        await chat.messages().count() == 0
        and await chat.page.locator("#empty").is_visible()
        and await chat.evaluate("location.hash") == ""
    )
