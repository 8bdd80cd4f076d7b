"""POST /chat and the REST reads: what a client without a WebSocket sees."""

import itertools
from datetime import datetime, timedelta

from shared.schemas import ChatAccepted, Message, Status
from tests.helpers import ApiClient, eventually, expected_reply, new_conversation_id, prompt


async def test_post_chat_answers_202_with_the_accepted_shape(api: ApiClient) -> None:
    """The 202 body is exactly the contract's ChatAccepted, with distinct ids."""
    text = prompt("shape", tokens=3, delay_ms=0)
    conversation_id = new_conversation_id()
    response = await api.http.post(
        "/chat", json={"message": text, "conversationId": conversation_id}
    )
    assert response.status_code == 202
    assert response.headers["content-type"].startswith("application/json")
    accepted = ChatAccepted.model_validate(response.json())
    assert set(response.json()) == {
        "conversationId",
        "userMessageId",
        "messageId",
        "message",
        "status",
    }
    assert accepted.conversation_id == conversation_id
    assert accepted.message == "Message received, AI is responding..."
    assert accepted.status == "streaming"
    assert accepted.user_message_id != accepted.message_id
    await api.finished(conversation_id, accepted.message_id)


async def test_reply_is_stored_completed_with_the_models_exact_text(api: ApiClient) -> None:
    """GET shows the user message completed at once and the reply completed with the mock's text."""
    text = prompt("exact", tokens=20, delay_ms=5)
    accepted = await api.post_chat(text, new_conversation_id())

    user = await api.message(accepted.conversation_id, accepted.user_message_id)
    assert (user.sender, user.status, user.message, user.seq) == ("user", Status.COMPLETED, text, 0)
    assert user.error is None

    reply = await api.finished(accepted.conversation_id, accepted.message_id)
    assert reply.sender == "assistant"
    assert reply.status == Status.COMPLETED
    assert reply.message == expected_reply(text, 20)
    assert reply.seq >= 1
    assert reply.error is None

    for message in (user, reply):
        created = datetime.fromisoformat(message.timestamp)
        assert created.utcoffset() == timedelta(0), f"not UTC: {message.timestamp}"

    stored = await api.conversation(accepted.conversation_id)
    assert stored.conversation_id == accepted.conversation_id
    assert [message.id for message in stored.messages] == [user.id, reply.id]
    assert stored.messages[1] == reply

    raw = await api.http.get(f"/conversations/{accepted.conversation_id}/messages")
    assert set(raw.json()) == {"conversationId", "messages"}
    for message in raw.json()["messages"]:
        assert "error" not in message, "error is only present on failed messages"
        assert message["from"] in ("user", "assistant")


async def test_absent_conversation_id_creates_a_new_conversation(api: ApiClient) -> None:
    """Each post without an id opens its own conversation."""
    first = await api.post_chat(prompt("new-1", tokens=2, delay_ms=0))
    second = await api.post_chat(prompt("new-2", tokens=2, delay_ms=0))
    assert first.conversation_id != second.conversation_id
    for accepted in (first, second):
        await api.finished(accepted.conversation_id, accepted.message_id)
        stored = await api.conversation(accepted.conversation_id)
        assert [m.id for m in stored.messages] == [accepted.user_message_id, accepted.message_id]


async def test_unknown_conversation_id_is_created_on_first_post(api: ApiClient) -> None:
    """A client may choose the id: unknown before the post, a conversation after it."""
    conversation_id = new_conversation_id()
    assert await api.conversation_status(conversation_id) == 404
    accepted = await api.post_chat(prompt("chosen", tokens=2, delay_ms=0), conversation_id)
    assert accepted.conversation_id == conversation_id
    await api.finished(conversation_id, accepted.message_id)
    stored = await api.conversation(conversation_id)
    assert [m.sender for m in stored.messages] == ["user", "assistant"]


async def test_polling_shows_the_reply_growing_then_completed(api: ApiClient) -> None:
    """A reply in flight is visible through GET as a growing prefix of the final text."""
    text = prompt("poll", tokens=100, delay_ms=20)
    final = expected_reply(text, 100)
    accepted = await api.post_chat(text, new_conversation_id())
    partials: list[str] = []

    async def completed() -> Message | None:
        message = await api.message(accepted.conversation_id, accepted.message_id)
        assert final.startswith(message.message)
        if message.status == Status.COMPLETED:
            return message
        assert message.status in (Status.CREATED, Status.STREAMING)
        if message.message and message.message not in partials:
            partials.append(message.message)
        return None

    reply = await eventually(completed, what="the reply to complete")
    assert reply.message == final
    assert len(partials) >= 2, f"expected to see the text grow, saw {partials}"
    assert all(len(a) < len(b) for a, b in itertools.pairwise([*partials, final]))


async def test_unknown_conversation_is_404(api: ApiClient) -> None:
    response = await api.http.get(f"/conversations/{new_conversation_id()}/messages")
    assert response.status_code == 404
    assert "detail" in response.json()


async def test_unknown_message_in_an_existing_conversation_is_404(api: ApiClient) -> None:
    accepted, _ = await api.ask(prompt("404", tokens=2, delay_ms=0), new_conversation_id())
    response = await api.http.get(
        f"/conversations/{accepted.conversation_id}/messages/not-a-message-id"
    )
    assert response.status_code == 404
    other = await api.http.get(
        f"/conversations/{new_conversation_id()}/messages/{accepted.message_id}"
    )
    assert other.status_code == 404, "a message is only found in its own conversation"
