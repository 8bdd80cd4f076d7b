"""Editing a question and regenerating an answer in the page, then moving between the branches."""

from playwright.async_api import BrowserContext

from tests.browser import ChatPage, words
from tests.helpers import ApiClient, eventually, prompt


async def shown_ids(chat: ChatPage) -> list[str]:
    ids: list[str] = await chat.messages().evaluate_all("items => items.map((i) => i.dataset.id)")
    return ids


async def position(chat: ChatPage, message_id: str) -> str:
    nav = chat.message(message_id).locator(".branches .position")
    return await nav.inner_text() if await nav.count() else ""


async def test_edit_and_regenerate_make_branches_the_page_moves_between(
    api: ApiClient, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, api.base_url)
    await chat.send(prompt("first question", tokens=4))
    first_question = await chat.last_id("user")
    first_reply = await chat.last_id("assistant")
    await chat.finished(first_reply)
    await chat.send(prompt("second question", tokens=4))
    second_question = await chat.last_id("user", not_=first_question)
    second_reply = await chat.last_id("assistant", not_=first_reply)
    await chat.finished(second_reply)
    conversation_id = await chat.conversation_id()
    linear = [first_question, first_reply, second_question, second_reply]
    assert await shown_ids(chat) == linear

    await chat.message(first_question).locator("button.edit").click()
    edit_box = chat.message(first_question).locator("textarea.edit-box")
    edited = prompt("first question, edited", tokens=4)
    await edit_box.fill(edited)
    await edit_box.press("Enter")

    async def edited_branch_shown() -> list[str]:
        ids = await shown_ids(chat)
        return ids if len(ids) == 2 and ids[0] not in linear else []

    edited_question, edited_reply = await eventually(edited_branch_shown, what="the new branch")
    await chat.finished(edited_reply)
    assert await chat.text(edited_question) == edited
    assert await position(chat, edited_question) == "2/2"
    stored = {m.id: m for m in (await api.conversation(conversation_id)).messages}
    assert stored[edited_question].parent_id is None, "an edit of the first question is a root"
    assert stored[edited_reply].parent_id == edited_question

    await chat.message(edited_question).locator("button.previous").click()
    await eventually(lambda: _shows(chat, linear), what="the first branch back")
    assert await position(chat, first_question) == "1/2"

    await chat.message(second_reply).locator("button.regenerate").click()

    async def regenerated_shown() -> str:
        ids = await shown_ids(chat)
        return ids[3] if len(ids) == 4 and ids[3] != second_reply else ""

    regenerated = await eventually(regenerated_shown, what="the regenerated answer")
    await chat.finished(regenerated)
    assert await shown_ids(chat) == [*linear[:3], regenerated]
    assert await position(chat, regenerated) == "2/2"
    again = await api.message(conversation_id, regenerated)
    assert again.parent_id == second_question
    assert words(await chat.text(regenerated)) == words(again.message)

    await chat.message(regenerated).locator("button.previous").click()
    await eventually(lambda: _shows(chat, linear), what="the first answer back")
    original = await api.message(conversation_id, second_reply)
    assert words(await chat.text(second_reply)) == words(original.message)
    assert chat.errors == []


async def _shows(chat: ChatPage, ids: list[str]) -> bool:
    return await shown_ids(chat) == ids
