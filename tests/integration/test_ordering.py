"""History and per-conversation order: what the model is sent, and one reply at a time."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from devstack.processes import Process
from shared.schemas import Status
from tests.clients import Subscriber
from tests.helpers import (
    ApiClient,
    MockClient,
    eventually,
    expected_reply,
    new_conversation_id,
    prompt,
    queue_settled,
    queue_stats,
)
from tests.infra import SYSTEM_PROMPT, Deployment


def _turns(texts: list[str], tokens: int) -> list[dict[str, str]]:
    """The context the model must see: every user text followed by the reply it got."""
    turns: list[dict[str, str]] = []
    for text in texts:
        turns.append({"role": "user", "content": text})
        turns.append({"role": "assistant", "content": expected_reply(text, tokens)})
    return turns


async def _only_request(mock: MockClient, text: str) -> list[dict[str, Any]]:
    requests = await mock.requests(text)
    assert len(requests) == 1, f"expected one model request for {text!r}, got {len(requests)}"
    assert requests[0]["attempt"] == 0
    messages: list[dict[str, Any]] = requests[0]["messages"]
    return messages


async def test_history_is_returned_in_creation_order_and_sent_whole(
    api: ApiClient, mock: MockClient
) -> None:
    conversation_id = new_conversation_id()
    texts = [prompt(f"turn-{index}", tokens=4, delay_ms=0) for index in range(4)]
    ids: list[str] = []
    for text in texts:
        accepted, reply = await api.ask(text, conversation_id)
        assert reply.message == expected_reply(text, 4)
        ids += [accepted.user_message_id, accepted.message_id]

    stored = await api.conversation(conversation_id)
    assert [message.id for message in stored.messages] == ids
    assert [message.sender for message in stored.messages] == ["user", "assistant"] * 4
    assert [message.message for message in stored.messages] == [
        turn["content"] for turn in _turns(texts, 4)
    ]
    assert all(message.status == Status.COMPLETED for message in stored.messages)
    timestamps = [message.timestamp for message in stored.messages]
    assert timestamps == sorted(timestamps)

    for index, text in enumerate(texts):
        context = await _only_request(mock, text)
        expected = [{"role": "system", "content": SYSTEM_PROMPT}]
        expected += [*_turns(texts[:index], 4), {"role": "user", "content": text}]
        assert context == expected, f"context of turn {index}"


async def _three_quick_posts(api: ApiClient, mock: MockClient) -> None:
    """Post three messages while the first reply streams; check they are answered in turn."""
    conversation_id = new_conversation_id()
    texts = [
        prompt("first", tokens=50, delay_ms=20),
        prompt("second", tokens=6, delay_ms=2),
        prompt("third", tokens=6, delay_ms=2),
    ]
    tokens = [50, 6, 6]
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        first = await api.post_chat(texts[0], conversation_id)
        await subscriber.until(lambda s: s.seq(first.message_id) >= 1, what="the first reply")
        later = [await api.post_chat(text, conversation_id) for text in texts[1:]]
        streaming = await api.message(conversation_id, first.message_id)
        assert streaming.status == Status.STREAMING, "precondition: posted while it streams"
        accepted = [first, *later]
        for item in accepted:
            await subscriber.until_finished(item.message_id, timeout=30)

    replies = [item.message_id for item in accepted]
    for reply_id, text, count in zip(replies, texts, tokens, strict=True):
        assert subscriber.text(reply_id) == expected_reply(text, count)
        assert subscriber.messages[reply_id].status == Status.COMPLETED

    # One at a time, in order: each reply starts streaming only after the previous one ended.
    timeline = subscriber.timeline()
    for earlier, following in itertools.pairwise(replies):
        ended = timeline.index(("message.completed", earlier, None))
        started = timeline.index(("message.updated", following, None))
        assert ended < started, f"reply {following} started before {earlier} completed"

    # Each reply was generated with the previous reply's whole text in its context.
    for index in (1, 2):
        context = await _only_request(mock, texts[index])
        assert context[-3:] == [
            {"role": "user", "content": texts[index - 1]},
            {"role": "assistant", "content": expected_reply(texts[index - 1], tokens[index - 1])},
            {"role": "user", "content": texts[index]},
        ]

    stored = await api.conversation(conversation_id)
    assert [message.id for message in stored.messages] == [
        message_id for item in accepted for message_id in (item.user_message_id, item.message_id)
    ]
    by_id = {message.id: message for message in stored.messages}
    for reply_id in replies:
        assert by_id[reply_id].message == subscriber.text(reply_id)
        assert by_id[reply_id].seq == subscriber.seq(reply_id)


async def test_quick_posts_are_answered_one_at_a_time_in_order(
    api: ApiClient, mock: MockClient
) -> None:
    await _three_quick_posts(api, mock)


@pytest.fixture
def second_responder(stack: Deployment) -> Iterator[Process]:
    """A second responder sharing the work for one test, stopped afterwards."""
    process = stack.stack.start_responder(name=f"main-responder-extra-{uuid.uuid4().hex[:6]}")
    try:
        yield process
    finally:
        process.stop()


async def test_order_holds_with_two_responders(
    api: ApiClient, mock: MockClient, stack: Deployment, second_responder: Process
) -> None:
    """Two responders share the queue, yet each conversation is still answered in order."""
    vhost = stack.broker.vhost
    if vhost is not None:

        async def two_consumers() -> bool:
            stats = await asyncio.to_thread(queue_stats, vhost, "chat-message")
            return stats["consumers"] == 2

        await eventually(two_consumers, what="two responders consuming chat-message")
    await asyncio.gather(*(_three_quick_posts(api, mock) for _ in range(3)))
    assert second_responder.running()
    if vhost is not None:
        await eventually(lambda: queue_settled(vhost), what="every job acknowledged")
