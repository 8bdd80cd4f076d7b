"""The model's whole stream, end to end: reasoning, usage, finish reasons and provider quirks.

Each test drives the real services against the mock model, which scripts one quirk per prompt;
what is checked is what a client sees: the WebSocket stream, GET and the stored reply.
"""

import contextlib

from mock_openai import reasoning_tokens
from mock_openai.wire import STREAM_ERROR_MESSAGE
from services.responder.tokens import count_tokens
from shared.schemas import Message, Status, Usage
from tests.clients import Subscriber
from tests.helpers import ApiClient, MockClient, expected_reply, new_conversation_id, prompt
from tests.infra import SYSTEM_PROMPT

MODEL = "mock-model"


def mock_usage(text: str, completion: int, reasoning: int = 0) -> Usage:
    """What the mock reports: the words of the request's messages, and the tokens it sent."""
    prompt_words = len(f"{SYSTEM_PROMPT} {text}".split())
    return Usage(
        prompt_tokens=prompt_words,
        completion_tokens=completion + reasoning,
        total_tokens=prompt_words + completion + reasoning,
        estimated=False,
    )


def estimate(text: str, reply: Message) -> Usage:
    """Our offline count: system prompt and question (3 each, 3 for the reply) and the reply."""
    prompt_tokens = 3 + count_tokens(SYSTEM_PROMPT) + 3 + count_tokens(text) + 3
    completion = count_tokens(reply.message) + count_tokens(reply.reasoning or "")
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        estimated=True,
    )


def expected_reasoning(text: str, count: int) -> str:
    return "".join(reasoning_tokens(text, 0, count))


async def test_reasoning_streams_apart_and_is_stored_with_usage(api: ApiClient) -> None:
    """Reasoning arrives first in `reasoning` of the deltas, under the same `seq` as the text."""
    for field in ("reasoning_content", "reasoning"):
        conversation_id = new_conversation_id()
        text = prompt("think", tokens=6, reasoning=5, reasoning_field=field, delay_ms=2)
        async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
            accepted = await api.post_chat(text, conversation_id)
            streamed = await subscriber.until_finished(accepted.message_id)
        deltas = [
            event
            for event in subscriber.events_of(accepted.message_id)
            if event["type"] == "message.delta"
        ]
        assert any("reasoning" in delta for delta in deltas)
        first_text = next(i for i, delta in enumerate(deltas) if delta["delta"])
        assert all("reasoning" not in delta for delta in deltas[first_text + 1 :])
        stored = await api.message(conversation_id, accepted.message_id)
        assert stored == streamed
        assert stored.status == Status.COMPLETED
        assert stored.message == expected_reply(text, 6)
        assert stored.reasoning == expected_reasoning(text, 5)
        assert stored.usage == mock_usage(text, 6, reasoning=5)
        assert (stored.finish_reason, stored.model) == ("stop", MODEL)
        raw = (await api.http.get(f"/conversations/{conversation_id}/messages")).json()
        user, reply = raw["messages"]
        assert "reasoning" not in user and "usage" not in user
        assert reply["finishReason"] == "stop"
        assert reply["usage"]["estimated"] is False


async def test_late_joiner_rebuilds_the_reasoning_exactly(api: ApiClient, api_b: ApiClient) -> None:
    conversation_id = new_conversation_id()
    text = prompt("late-thought", tokens=10, reasoning=40, delay_ms=15)
    async with contextlib.AsyncExitStack() as stack:
        observer = await stack.enter_async_context(Subscriber.open(api.ws_url, conversation_id))
        accepted = await api.post_chat(text, conversation_id)
        reply_id = accepted.message_id

        def thought_words(subscriber: Subscriber) -> int:
            message = subscriber.get(reply_id)
            return len((message.reasoning or "").split()) if message else 0

        await observer.until(lambda s: thought_words(s) >= 10, what="10 reasoning tokens")
        joiner = await stack.enter_async_context(Subscriber.open(api_b.ws_url, conversation_id))
        joined = joiner.get(reply_id)
        assert joined is not None and joined.status == Status.STREAMING
        assert joined.reasoning and expected_reasoning(text, 40).startswith(joined.reasoning)
        for subscriber in (observer, joiner):
            final = await subscriber.until_finished(reply_id)
            assert final.reasoning == expected_reasoning(text, 40)
            assert subscriber.text(reply_id) == expected_reply(text, 10)


async def test_earlier_reasoning_is_not_sent_back(api: ApiClient, mock: MockClient) -> None:
    conversation_id = new_conversation_id()
    first = prompt("first", tokens=3, reasoning=3, delay_ms=0)
    _, reply = await api.ask(first, conversation_id)
    assert reply.reasoning
    second = prompt("second", tokens=2, delay_ms=0)
    await api.ask(second, conversation_id)
    [request] = await mock.requests(second)
    assert request["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": first},
        {"role": "assistant", "content": reply.message},
        {"role": "user", "content": second},
    ]


async def test_provider_quirks_are_read_through(api: ApiClient) -> None:
    """SSE comments, chunks with empty `choices` and a missing `[DONE]` change nothing."""
    text = prompt("quirks", tokens=5, delay_ms=0, comments=1, empty_choices=1, done=0)
    _, reply = await api.ask(text, new_conversation_id())
    assert reply.status == Status.COMPLETED
    assert reply.message == expected_reply(text, 5)
    assert reply.usage == mock_usage(text, 5)
    assert reply.finish_reason == "stop"


async def test_finish_reasons_are_kept(api: ApiClient) -> None:
    for reason in ("length", "content_filter"):
        text = prompt("cut", tokens=3, delay_ms=0, finish=reason)
        _, reply = await api.ask(text, new_conversation_id())
        assert (reply.status, reply.finish_reason) == (Status.COMPLETED, reason)
        assert reply.message == expected_reply(text, 3)


async def test_an_error_event_fails_the_reply_keeping_its_text(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    text = prompt("error-event", tokens=8, error_after=3, reasoning=2, delay_ms=0)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        accepted = await api.post_chat(text, conversation_id)
        streamed = await subscriber.until_finished(accepted.message_id)
    assert subscriber.final(accepted.message_id)["type"] == "message.failed"
    reply = await api.message(conversation_id, accepted.message_id)
    assert reply == streamed
    assert reply.status == Status.FAILED
    assert reply.error is not None and STREAM_ERROR_MESSAGE in reply.error
    assert reply.message == expected_reply(text, 3)
    assert reply.reasoning == expected_reasoning(text, 2)
    assert reply.finish_reason == "error"
    assert reply.usage == estimate(text, reply)


async def test_usage_is_estimated_when_the_server_sends_none(api: ApiClient) -> None:
    text = prompt("no-usage", tokens=7, delay_ms=0, usage=0)
    _, reply = await api.ask(text, new_conversation_id())
    assert reply.status == Status.COMPLETED
    assert reply.message == expected_reply(text, 7)
    assert reply.usage == estimate(text, reply)


async def test_a_stopped_reply_gets_estimated_usage(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    text = prompt("stopped", tokens=200, delay_ms=20)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        accepted = await api.post_chat(text, conversation_id)
        await subscriber.until(lambda s: s.words(accepted.message_id) >= 3, what="3 tokens")
        response = await api.http.post(
            f"/conversations/{conversation_id}/messages/{accepted.message_id}/stop"
        )
        assert response.status_code == 200, response.text
        await subscriber.until_finished(accepted.message_id)
    reply = await api.message(conversation_id, accepted.message_id)
    assert (reply.status, reply.stopped, reply.finish_reason) == (Status.COMPLETED, True, "stopped")
    assert 3 <= len(reply.message.split()) < 200
    assert reply.usage == estimate(text, reply)
    assert reply.model == MODEL


async def test_a_reply_stopped_before_it_started_used_nothing(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    first = await api.post_chat(prompt("busy", tokens=200, delay_ms=20), conversation_id)
    queued = await api.post_chat(prompt("queued", tokens=3, delay_ms=0), conversation_id)
    for accepted in (queued, first):
        response = await api.http.post(
            f"/conversations/{conversation_id}/messages/{accepted.message_id}/stop"
        )
        assert response.status_code == 200, response.text
    reply = await api.finished(conversation_id, queued.message_id)
    assert (reply.status, reply.stopped, reply.message) == (Status.COMPLETED, True, "")
    assert (reply.finish_reason, reply.model) == ("stopped", MODEL)
    assert reply.usage == Usage(
        prompt_tokens=0, completion_tokens=0, total_tokens=0, estimated=True
    )
    await api.finished(conversation_id, first.message_id)
