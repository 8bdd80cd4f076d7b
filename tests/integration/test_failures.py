"""Upstream failures: the reply ends `failed` with what was received, and the work goes on."""

import pytest

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
)
from tests.infra import SYSTEM_PROMPT, Deployment

MODEL = "mock-model"
"""OPENAI_MODEL of the test stack: the mock names no other model, so every reply carries it."""


async def test_stream_failure_keeps_partial_text_and_the_conversation_goes_on(
    api: ApiClient, mock: MockClient, stack: Deployment
) -> None:
    conversation_id = new_conversation_id()
    text = prompt("breaks", tokens=20, delay_ms=5, fail_after=5)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        accepted = await api.post_chat(text, conversation_id)
        failed = await subscriber.until_finished(accepted.message_id)

    partial = expected_reply(text, 5)
    assert failed.status == Status.FAILED
    assert failed.error
    assert failed.message == partial
    assert subscriber.final(accepted.message_id)["type"] == "message.failed"
    stored = await api.message(conversation_id, accepted.message_id)
    assert stored == failed
    assert (stored.status, stored.message, stored.error) == (Status.FAILED, partial, failed.error)
    assert len(await mock.requests(text)) == 1, "a broken stream is not silently re-asked"

    if stack.broker.vhost is not None:
        vhost = stack.broker.vhost
        await eventually(lambda: queue_settled(vhost), what="the chat-message to be acknowledged")

    follow_up = prompt("after the failure", tokens=4, delay_ms=0)
    _, reply = await api.ask(follow_up, conversation_id)
    assert reply.status == Status.COMPLETED
    assert reply.message == expected_reply(follow_up, 4)
    (request,) = await mock.requests(follow_up)
    assert request["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": text},
        {"role": "user", "content": follow_up},
    ], "the failed reply is left out of the model's context"


async def test_model_error_status_fails_the_reply_naming_it(
    api: ApiClient, stack: Deployment
) -> None:
    conversation_id = new_conversation_id()
    text = prompt("refused", status=500)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        accepted = await api.post_chat(text, conversation_id)
        failed = await subscriber.until_finished(accepted.message_id, timeout=30)
    assert failed.status == Status.FAILED
    assert failed.error is not None and "500" in failed.error
    assert failed.message == ""
    assert (failed.finish_reason, failed.model) == ("error", MODEL), "finished like any reply"
    assert subscriber.final(accepted.message_id)["type"] == "message.failed"
    assert await api.message(conversation_id, accepted.message_id) == failed
    if stack.broker.vhost is not None:
        vhost = stack.broker.vhost
        await eventually(lambda: queue_settled(vhost), what="the chat-message to be acknowledged")


@pytest.mark.parametrize("status", [400, 429, 503])
async def test_other_model_error_statuses_fail_the_reply(api: ApiClient, status: int) -> None:
    """Client errors, rate limits and outages alike end in `failed`, never stuck streaming."""
    _, reply = await api.ask(prompt("status", status=status), new_conversation_id(), 30)
    assert reply.status == Status.FAILED
    assert reply.error is not None and str(status) in reply.error


async def test_a_model_that_goes_silent_fails_the_reply_keeping_its_text(api: ApiClient) -> None:
    """No reply stays `streaming` forever: a hung upstream times out (3 s on the test stack)."""
    conversation_id = new_conversation_id()
    text = prompt("goes silent", tokens=20, delay_ms=5, hang_after=4)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        accepted = await api.post_chat(text, conversation_id)
        failed = await subscriber.until_finished(accepted.message_id, timeout=30)
    assert failed.status == Status.FAILED
    assert failed.error is not None and "timed out" in failed.error
    assert failed.message == expected_reply(text, 4)
    assert await api.message(conversation_id, accepted.message_id) == failed
