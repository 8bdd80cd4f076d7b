"""Joining mid-stream: the snapshot plus what follows rebuild the reply with no gap or duplicate."""

import contextlib

from shared.schemas import Status
from tests.clients import Subscriber
from tests.helpers import ApiClient, expected_reply, new_conversation_id, prompt


async def test_late_joiners_on_both_instances_rebuild_the_exact_text(
    api: ApiClient, api_b: ApiClient
) -> None:
    conversation_id = new_conversation_id()
    text = prompt("late", tokens=60, delay_ms=20)
    final = expected_reply(text, 60)
    async with contextlib.AsyncExitStack() as stack:
        observer = await stack.enter_async_context(Subscriber.open(api.ws_url, conversation_id))
        accepted = await api.post_chat(text, conversation_id)
        reply_id = accepted.message_id
        joiners: list[Subscriber] = []
        joined_mid_stream: list[int] = []
        for moment, client in ((5, api_b), (20, api), (35, api_b), (50, api)):
            await observer.until_words(reply_id, moment)
            joiner = await stack.enter_async_context(
                Subscriber.open(client.ws_url, conversation_id)
            )
            joined = joiner.get(reply_id)
            assert joined is not None, "a reply in flight is part of the snapshot"
            if joined.status == Status.STREAMING:
                assert final.startswith(joined.message)
                joined_mid_stream.append(joined.seq)
            joiners.append(joiner)
        for subscriber in (observer, *joiners):
            await subscriber.until_finished(reply_id)
    stored = await api.message(conversation_id, reply_id)
    assert stored.status == Status.COMPLETED
    assert stored.message == final
    for subscriber in (observer, *joiners):
        assert subscriber.text(reply_id) == final
    assert joined_mid_stream and min(joined_mid_stream) > 0, "joined with part of it sent"


async def test_reconnecting_client_gets_a_fresh_snapshot_and_carries_on(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    text = prompt("reconnect", tokens=60, delay_ms=20)
    async with Subscriber.open(api.ws_url, conversation_id) as first:
        accepted = await api.post_chat(text, conversation_id)
        await first.until(lambda s: s.words(accepted.message_id) >= 10, what="token 10")
        seen = first.text(accepted.message_id)
    async with Subscriber.open(api.ws_url, conversation_id) as again:
        snapshot = again.get(accepted.message_id)
        assert snapshot is not None
        assert snapshot.message.startswith(seen)
        reply = await again.until_finished(accepted.message_id)
    assert reply.message == expected_reply(text, 60)
    assert (await api.message(conversation_id, accepted.message_id)).message == reply.message


async def test_joining_between_two_mongodb_writes_uses_the_live_tail(
    lagging_api: ApiClient,
) -> None:
    """MongoDB lags seconds behind the stream; a joiner's snapshot must not: it comes from the
    relay's live tail, and the stream continues from there with no gap and no duplicate.
    """
    api = lagging_api  # its responder writes MongoDB every 5 s
    conversation_id = new_conversation_id()
    text = prompt("lagging", tokens=100, delay_ms=20)
    final = expected_reply(text, 100)
    async with contextlib.AsyncExitStack() as stack:
        observer = await stack.enter_async_context(Subscriber.open(api.ws_url, conversation_id))
        accepted = await api.post_chat(text, conversation_id)
        reply_id = accepted.message_id
        joiners: list[Subscriber] = []
        for moment in (15, 40, 70):
            await observer.until_words(reply_id, moment)
            joiner = await stack.enter_async_context(Subscriber.open(api.ws_url, conversation_id))
            stored = await api.message(conversation_id, reply_id)
            joined = joiner.get(reply_id)
            assert joined is not None
            assert stored.status == Status.STREAMING, "precondition: the reply is still streaming"
            assert joined.seq > stored.seq, (
                f"snapshot seq {joined.seq} should be ahead of MongoDB's {stored.seq}: "
                "the snapshot must come from the live tail"
            )
            assert final.startswith(joined.message)
            assert len(joined.message) > len(stored.message)
            joiners.append(joiner)
        for subscriber in (observer, *joiners):
            await subscriber.until_finished(reply_id)
    stored = await api.message(conversation_id, reply_id)
    assert stored.message == final
    for subscriber in (observer, *joiners):
        assert subscriber.text(reply_id) == final
        assert subscriber.seq(reply_id) == stored.seq
