"""The live stream: snapshot, then events that rebuild every message exactly, on any instance."""

import asyncio
import contextlib

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.schemas import Status
from tests.clients import Subscriber
from tests.helpers import DEFAULT_TIMEOUT, ApiClient, expected_reply, new_conversation_id, prompt


async def test_new_conversation_streams_snapshot_then_events_in_order(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    text = prompt("ws", tokens=20, delay_ms=5)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        assert subscriber.snapshot == []
        accepted = await api.post_chat(text, conversation_id)
        final = await subscriber.until_finished(accepted.message_id)

    user_events = subscriber.events_of(accepted.user_message_id)
    assert [event["type"] for event in user_events] == ["message.created"]
    user = subscriber.messages[accepted.user_message_id]
    assert (user.sender, user.status, user.message, user.seq) == ("user", Status.COMPLETED, text, 0)

    kinds = [event["type"] for event in subscriber.events_of(accepted.message_id)]
    assert kinds[:2] == ["message.created", "message.updated"]
    assert kinds[-1] == "message.completed"
    assert set(kinds[2:-1]) == {"message.delta"}
    assert subscriber.events.index(user_events[0]) == 0, "the user message is announced first"

    created, started = (event["message"] for event in subscriber.events_of(accepted.message_id)[:2])
    assert (created["from"], created["status"], created["message"], created["seq"]) == (
        "assistant",
        "created",
        "",
        0,
    )
    assert (started["status"], started["seq"]) == ("streaming", 0)
    deltas = [e for e in subscriber.events_of(accepted.message_id) if e["type"] == "message.delta"]
    assert [delta["seq"] for delta in deltas] == list(range(1, len(deltas) + 1))
    assert set(deltas[0]) >= {"type", "conversationId", "messageId", "seq", "delta"}

    assert final.status == Status.COMPLETED
    assert final.message == expected_reply(text, 20)
    assert final.seq == len(deltas), "seq counts the deltas the text is made of"
    assert await api.message(conversation_id, accepted.message_id) == final


async def test_snapshot_of_an_existing_conversation_is_its_whole_history(
    api: ApiClient, api_b: ApiClient
) -> None:
    conversation_id = new_conversation_id()
    for index in range(2):
        await api.ask(prompt(f"history-{index}", tokens=3, delay_ms=0), conversation_id)
    stored = await api.conversation(conversation_id)
    for client in (api, api_b):
        async with Subscriber.open(client.ws_url, conversation_id) as subscriber:
            assert subscriber.snapshot == stored.messages


async def test_two_instances_relay_the_same_stream_and_only_to_its_conversation(
    api: ApiClient, api_b: ApiClient
) -> None:
    """Subscribers on A and B agree frame for frame; other conversations see none of it."""
    busy = [new_conversation_id(), new_conversation_id()]
    idle = new_conversation_id()
    async with contextlib.AsyncExitStack() as stack:
        subscribers = {
            (conversation_id, name): await stack.enter_async_context(
                Subscriber.open(client.ws_url, conversation_id)
            )
            for conversation_id in [*busy, idle]
            for name, client in (("a", api), ("b", api_b))
        }
        texts = [prompt("busy-a", tokens=30, delay_ms=5), prompt("busy-b", tokens=30, delay_ms=5)]
        # Posted on different instances, streaming at the same time.
        first = await api.post_chat(texts[0], busy[0])
        second = await api_b.post_chat(texts[1], busy[1])
        for accepted, text in ((first, texts[0]), (second, texts[1])):
            on_a = subscribers[(accepted.conversation_id, "a")]
            on_b = subscribers[(accepted.conversation_id, "b")]
            for subscriber in (on_a, on_b):
                final = await subscriber.until_finished(accepted.message_id)
                assert final.message == expected_reply(text, 30)
            assert on_a.timeline() == on_b.timeline()
            assert on_a.messages == on_b.messages

        # A closing turn in every conversation: events are relayed in the order they were
        # published, so anything leaked from the busy replies would arrive before these.
        closing = {
            conversation_id: await api.post_chat(
                prompt("closing", tokens=2, delay_ms=0), conversation_id
            )
            for conversation_id in [*busy, idle]
        }
        for (conversation_id, _), subscriber in subscribers.items():
            await subscriber.until_finished(closing[conversation_id].message_id)
        for name in ("a", "b"):
            idle_subscriber = subscribers[(idle, name)]
            assert idle_subscriber.snapshot == []
            first_event = idle_subscriber.events[0]
            assert first_event["type"] == "message.created"
            assert first_event["message"]["id"] == closing[idle].user_message_id
            assert set(idle_subscriber.messages) == {
                closing[idle].user_message_id,
                closing[idle].message_id,
            }


async def test_many_subscribers_rebuild_the_same_text(api: ApiClient, api_b: ApiClient) -> None:
    conversation_id = new_conversation_id()
    text = prompt("fan-out", tokens=40, delay_ms=5)
    async with contextlib.AsyncExitStack() as stack:
        subscribers = [
            await stack.enter_async_context(Subscriber.open(client.ws_url, conversation_id))
            for client in (api, api, api, api_b, api_b)
        ]
        accepted = await api.post_chat(text, conversation_id)
        for subscriber in subscribers:
            await subscriber.until_finished(accepted.message_id)
    stored = await api.message(conversation_id, accepted.message_id)
    assert stored.message == expected_reply(text, 40)
    for subscriber in subscribers:
        assert subscriber.text(accepted.message_id) == stored.message
        assert subscriber.timeline() == subscribers[0].timeline()


async def test_invalid_conversation_id_is_refused(api: ApiClient) -> None:
    """The stream checks the id like POST does: the subscription is refused, no snapshot sent."""
    url = f"{api.ws_url}/conversations/bad.id/stream"
    with pytest.raises((InvalidStatus, ConnectionClosed)):
        async with connect(url) as websocket:
            await asyncio.wait_for(websocket.recv(), DEFAULT_TIMEOUT)
