"""The conversation list: its documents kept current by posts, paging, reading and renaming."""

import asyncio
from datetime import datetime
from typing import Any

import pytest

from shared.schemas import Conversation, ConversationPage
from tests.helpers import ApiClient, new_conversation_id, prompt

PAGE = 7


async def _conversation(api: ApiClient, conversation_id: str) -> Conversation:
    response = await api.http.get(f"/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    return Conversation.model_validate(response.json())


async def _page(api: ApiClient, before: str | None) -> ConversationPage:
    params: dict[str, Any] = {"limit": PAGE}
    if before is not None:
        params["before"] = before
    response = await api.http.get("/conversations", params=params)
    assert response.status_code == 200, response.text
    return ConversationPage.model_validate(response.json())


async def test_a_conversation_is_summarised_by_the_posts_that_change_it(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    first = prompt("What is the\n  capital of France, and why is it that city?", tokens=2)
    _, _ = await api.ask(first, conversation_id)

    created = await _conversation(api, conversation_id)
    assert created.conversation_id == conversation_id
    assert created.title == " ".join(first.split())[:80]
    assert created.message_count == 2
    assert created.created_at == created.updated_at

    await api.ask(prompt("and of Spain?", tokens=2), conversation_id)

    later = await _conversation(api, conversation_id)
    assert (later.title, later.created_at) == (created.title, created.created_at)
    assert later.message_count == 4
    assert datetime.fromisoformat(later.updated_at) > datetime.fromisoformat(created.updated_at)
    newest = (await _page(api, None)).conversations
    assert any(item.conversation_id == conversation_id for item in newest)


async def test_paging_while_others_post_repeats_nothing_and_moves_posted_ones_to_the_top(
    api: ApiClient,
) -> None:
    """Walk the whole list a page at a time, posting between pages: a new conversation, one the
    walk has passed and one still ahead of it. Each conversation not posted to is listed exactly
    once; one posted to moves to the top, so the walk lists it once if it had passed it and not
    at all if it was still ahead; a first page fetched afterwards shows every one posted to."""
    ours = [new_conversation_id() for _ in range(3 * PAGE)]
    for conversation_id in ours:
        await api.post_chat(prompt("listed", tokens=1, delay_ms=0), conversation_id)
    seen: list[str] = []
    created: list[str] = []
    passed: list[str] = []
    ahead: list[str] = []

    before = None
    while True:
        page = await _page(api, before)
        seen.extend(item.conversation_id for item in page.conversations)
        if page.next is None:
            break
        before = page.next
        waiting = [item for item in ours if item not in seen and item not in ahead]
        if waiting:
            created.append(new_conversation_id())
            passed.append(seen[-1])
            ahead.append(waiting[0])
            for conversation_id in (created[-1], passed[-1], ahead[-1]):
                await api.post_chat(prompt("meanwhile", tokens=1, delay_ms=0), conversation_id)

    assert len(ahead) >= 2, "posts happened between pages"
    assert len(seen) == len(set(seen)), "a conversation was listed twice"
    assert set(ours) - set(ahead) <= set(seen), f"skipped: {set(ours) - set(ahead) - set(seen)}"
    assert set(passed) <= set(seen), "one posted to after the walk passed it was listed before"
    assert not set(ahead) & set(seen), "one posted to while ahead of the walk moved to the top"
    assert not set(created) & set(seen), "new conversations appear on top, before the walk"
    posted = set(created) | set(passed) | set(ahead)
    top = await api.http.get("/conversations", params={"limit": len(posted)})
    assert {item["conversationId"] for item in top.json()["conversations"]} == posted


@pytest.mark.parametrize(
    "body",
    [{}, {"title": ""}, {"title": " \t\n"}, {"title": "x" * 201}, {"title": 7}, {"title": None}],
    ids=["missing", "empty", "whitespace", "201 characters", "number", "null"],
)
async def test_a_bad_title_is_refused_and_changes_nothing(
    api: ApiClient, body: dict[str, Any]
) -> None:
    conversation_id = new_conversation_id()
    await api.ask(prompt("keep my title", tokens=1, delay_ms=0), conversation_id)
    before = await _conversation(api, conversation_id)

    response = await api.http.patch(f"/conversations/{conversation_id}", json=body)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][:2] == ["body", "title"] or body == {}
    assert await _conversation(api, conversation_id) == before


async def test_rename(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    await api.ask(prompt("rename me", tokens=1, delay_ms=0), conversation_id)
    title = "Trip to Lisbon, " + "é" * 184

    response = await api.http.patch(f"/conversations/{conversation_id}", json={"title": title})

    assert response.status_code == 200
    assert Conversation.model_validate(response.json()).title == title
    assert (await _conversation(api, conversation_id)).title == title
    unknown = new_conversation_id()
    response = await api.http.patch(f"/conversations/{unknown}", json={"title": "x"})
    assert response.status_code == 404
    assert (await api.http.get(f"/conversations/{unknown}")).status_code == 404


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"before": "not-a-cursor"}, {"before": "!"}],
)
async def test_bad_paging_is_refused(api: ApiClient, params: dict[str, Any]) -> None:
    response = await api.http.get("/conversations", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


async def test_posts_on_two_instances_at_once_count_every_message(
    api: ApiClient, api_b: ApiClient
) -> None:
    """Both instances may see a new conversation as new; whichever creates its document second
    adds to it instead."""
    conversation_ids = [new_conversation_id() for _ in range(5)]
    await asyncio.gather(
        *(
            client.post_chat(prompt("at once", tokens=1, delay_ms=0), conversation_id)
            for conversation_id in conversation_ids
            for client in (api, api_b, api)
        )
    )
    for conversation_id in conversation_ids:
        assert (await _conversation(api, conversation_id)).message_count == 6
