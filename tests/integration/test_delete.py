"""DELETE /conversations/{id}: stopped, announced on every instance, gone from MongoDB for good."""

import asyncio

import aio_pika
import pytest
from websockets.exceptions import ConnectionClosed

from shared import broker
from shared.schemas import LOCAL_OWNER, ChatJob
from shared.store.database import Database
from shared.store.documents import conversation_key, tombstone
from tests.clients import Subscriber
from tests.helpers import (
    ApiClient,
    eventually,
    leftovers,
    new_conversation_id,
    prompt,
    queue_settled,
    queue_stats,
)
from tests.infra import Deployment


async def _closed(subscriber: Subscriber) -> int | None:
    """Read frames until the server closes the stream; its close code."""
    try:
        await subscriber.until(lambda _: False, timeout=10.0, what="the server to close")
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    raise AssertionError("unreachable: until only returns by raising")


async def test_delete_during_a_stream_tells_every_instance_and_leaves_nothing(
    api: ApiClient, api_b: ApiClient, database: Database, stack: Deployment
) -> None:
    conversation_id = new_conversation_id()
    first, _ = await api.ask(prompt("earlier", tokens=2, delay_ms=0), conversation_id)
    accepted = await api.post_chat(prompt("long", tokens=400, delay_ms=20), conversation_id)
    async with (
        Subscriber.open(api.ws_url, conversation_id) as on_a,
        Subscriber.open(api_b.ws_url, conversation_id) as on_b,
    ):
        for subscriber in (on_a, on_b):
            await subscriber.until(lambda s: s.seq(accepted.message_id) >= 3, what="streaming")

        response = await api.http.delete(f"/conversations/{conversation_id}")

        assert response.status_code == 204
        assert response.content == b""
        codes = await asyncio.gather(_closed(on_a), _closed(on_b))
        assert list(codes) == [1000, 1000]
        for subscriber in (on_a, on_b):
            assert subscriber.deleted
            assert subscriber.events[-1] == {
                "type": "conversation.deleted",
                "conversationId": conversation_id,
            }

    for client in (api, api_b):
        paths = [
            f"/conversations/{conversation_id}",
            f"/conversations/{conversation_id}/messages",
            f"/conversations/{conversation_id}/messages/{first.user_message_id}",
            f"/conversations/{conversation_id}/messages/{accepted.message_id}",
        ]
        for path in paths:
            assert (await client.http.get(path)).status_code == 404, path
        stop = f"/conversations/{conversation_id}/messages/{accepted.message_id}/stop"
        assert (await client.http.post(stop)).status_code == 404
        again = await client.http.delete(f"/conversations/{conversation_id}")
        assert again.status_code == 404
    vhost = stack.broker.vhost
    if vhost is not None:
        await eventually(lambda: queue_settled(vhost), what="the stopped job to be acknowledged")
    assert await leftovers(database, conversation_id) == []


async def test_a_job_redelivered_after_delete_is_acknowledged_and_dropped(
    api: ApiClient, database: Database, stack: Deployment
) -> None:
    vhost = stack.broker.vhost
    if vhost is None:
        pytest.skip("needs rabbitmqctl and a local broker to inspect the queues")
    conversation_id = new_conversation_id()
    accepted, _ = await api.ask(prompt("soon deleted", tokens=2, delay_ms=0), conversation_id)
    assert (await api.http.delete(f"/conversations/{conversation_id}")).status_code == 204
    dead_before = await asyncio.to_thread(queue_stats, vhost, broker.DEAD_LETTER_QUEUE)

    job = ChatJob(
        conversation_id=conversation_id,
        user_message_id=accepted.user_message_id,
        message_id=accepted.message_id,
    )
    connection = await aio_pika.connect(stack.broker.url)
    async with connection:
        channel = await connection.channel()
        await broker.publish_job(channel, job)

    await eventually(lambda: queue_settled(vhost), what="the redelivered job to be acknowledged")
    dead_after = await asyncio.to_thread(queue_stats, vhost, broker.DEAD_LETTER_QUEUE)
    assert dead_after["messages_ready"] == dead_before["messages_ready"]
    assert await leftovers(database, conversation_id) == []
    assert (await api.http.get(f"/conversations/{conversation_id}")).status_code == 404


async def test_delete_of_an_unknown_conversation_is_404(api: ApiClient) -> None:
    response = await api.http.delete(f"/conversations/{new_conversation_id()}")
    assert response.status_code == 404


async def test_posts_to_a_conversation_being_deleted_are_404_and_store_nothing(
    api: ApiClient, database: Database
) -> None:
    """While a DELETE is under way (its tombstone in place of the conversation's document),
    a post or a regenerate is refused; the DELETE, repeated, then leaves nothing."""
    conversation_id = new_conversation_id()
    accepted, _ = await api.ask(prompt("being deleted", tokens=2, delay_ms=0), conversation_id)
    key = conversation_key(LOCAL_OWNER, conversation_id)
    await database["conversations"].replace_one({"_id": key}, tombstone(conversation_id))
    stored = await database["messages"].count_documents({"conversationId": conversation_id})

    body = {"message": "too late", "conversationId": conversation_id}
    posted = await api.http.post("/chat", json=body)
    path = f"/conversations/{conversation_id}/messages/{accepted.message_id}/regenerate"
    regenerated = await api.http.post(path)

    assert posted.status_code == 404
    assert posted.json() == {"detail": f"conversation {conversation_id} was deleted"}
    assert regenerated.status_code == 404
    assert await database["messages"].count_documents({"conversationId": conversation_id}) == stored
    assert (await api.http.get(f"/conversations/{conversation_id}")).status_code == 404
    assert (await api.http.delete(f"/conversations/{conversation_id}")).status_code == 204
    assert await leftovers(database, conversation_id) == []


async def test_posts_racing_a_delete_are_removed_with_it_refused_or_start_afresh(
    api: ApiClient, api_b: ApiClient, database: Database
) -> None:
    """Posts on both instances race a DELETE, a few times over. However they interleave, a
    post is answered 202 or 404, and what is left is nothing, or a conversation started afresh
    by posts answered 202 whose document counts exactly its messages: never a conversation
    without messages, nor messages without their conversation."""
    for _ in range(10):
        conversation_id = new_conversation_id()
        await api.ask(prompt("raced", tokens=1, delay_ms=0), conversation_id)
        texts = [prompt("racing", tokens=1, delay_ms=0) for _ in range(10)]
        posts = [
            client.http.post("/chat", json={"message": text, "conversationId": conversation_id})
            for client, text in zip((api, api_b) * 5, texts, strict=True)
        ]
        *answers, deleted = await asyncio.gather(
            *posts, api.http.delete(f"/conversations/{conversation_id}")
        )

        assert deleted.status_code == 204
        assert {answer.status_code for answer in answers} <= {202, 404}
        accepted = {
            text for text, answer in zip(texts, answers, strict=True) if answer.status_code == 202
        }
        left = await leftovers(database, conversation_id)
        messages = [item for item in left if item["collection"] == "messages"]
        documents = [item for item in left if item["collection"] == "conversations"]
        assert len(documents) == (1 if messages else 0), left
        if messages:
            assert documents[0]["messageCount"] == len(messages)
            assert {item["message"] for item in messages if item["from"] == "user"} <= accepted
