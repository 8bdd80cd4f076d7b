"""The page against an API that wants a token: it asks for one, or takes `#token=` from the URL,
keeps it in the tab's session storage and uses it for REST and the WebSocket."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from playwright.async_api import BrowserContext

from tests.browser import ChatPage, words
from tests.helpers import eventually, prompt
from tests.infra import Deployment

SECRET = "page-test-secret-0123456789abcdef0123456789"


def token_for(user: str, ttl: float = 600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": int(now + ttl)}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
async def secured_url(stack: Deployment) -> AsyncIterator[str]:
    """One more API of the default stack, this one with AUTH_JWT_SECRET set."""
    process, url = await asyncio.to_thread(
        stack.stack.start_api, name="page-auth-api", AUTH_JWT_SECRET=SECRET
    )
    try:
        yield url
    finally:
        await asyncio.to_thread(process.stop)


async def dialog_open(chat: ChatPage) -> bool:
    return bool(await chat.evaluate("document.querySelector('#token-dialog').open"))


async def test_the_page_asks_for_a_token_and_chats_with_it(
    secured_url: str, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, secured_url)
    await eventually(lambda: dialog_open(chat), what="the page to ask for a token")
    token = token_for("alice")
    await chat.page.locator("#token-dialog input").fill(token)
    await chat.page.locator("#token-dialog button[type=submit]").click()
    assert not await dialog_open(chat)

    question = prompt("signed in", tokens=6)
    await chat.send(question)
    reply_id = await chat.last_id("assistant")
    await chat.finished(reply_id)
    conversation_id = await chat.conversation_id()
    async with httpx.AsyncClient(base_url=secured_url) as http:
        response = await http.get(
            f"/conversations/{conversation_id}/messages/{reply_id}",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    assert words(await chat.text(reply_id)) == words(response.json()["message"])
    assert await chat.evaluate("sessionStorage.getItem('chat.token')") == token


async def test_a_token_in_the_fragment_is_kept_and_leaves_the_url(
    secured_url: str, context: BrowserContext
) -> None:
    token = token_for("bob")
    chat = await ChatPage.open(context, secured_url, f"#token={token}")
    question = prompt("fragment", tokens=4)
    await chat.send(question)
    reply_id = await chat.last_id("assistant")
    await chat.finished(reply_id)
    assert not await dialog_open(chat)
    assert token not in chat.page.url
    assert await chat.evaluate("sessionStorage.getItem('chat.token')") == token
    conversation_id = await chat.conversation_id()
    row = chat.page.locator(f'#conversation-list li[data-id="{conversation_id}"]')
    await row.wait_for()

    other = await ChatPage.open(context, secured_url, f"#token={token_for('carol')}")
    await other.send(prompt("carol's own", tokens=2))
    own = await other.conversation_id()
    await other.page.locator(f'#conversation-list li[data-id="{own}"]').wait_for()
    assert await other.page.locator(f'li[data-id="{conversation_id}"]').count() == 0, (
        "another user does not see bob's conversation"
    )


async def test_an_expired_token_is_asked_for_again(
    secured_url: str, context: BrowserContext
) -> None:
    chat = await ChatPage.open(context, secured_url, f"#token={token_for('dave', ttl=-60)}")
    await eventually(lambda: dialog_open(chat), what="the page to ask for a new token")
    assert await chat.page.locator("#token-dialog .had-token").is_visible()
