"""DELETE /conversations/{id}: stopped, announced on every instance, gone from MongoDB for good."""

import asyncio
from typing import Any

import aio_pika
import pytest
from websockets.exceptions import ConnectionClosed

from shared import broker
from shared.schemas import ChatJob
from shared.store.database import Database
from tests.clients import Subscriber
from tests.helpers import (
    ApiClient,
    eventually,
    new_conversation_id,
    prompt,
    queue_settled,
    queue_stats,
)
from tests.infra import Deployment


async def _leftovers(database: Database, conversation_id: str) -> list[dict[str, Any]]:
    """Every document of any collection that still names the conversation."""
    found = []
    for name in await database.list_collection_names():
        async for document in database[name].find({"conversationId": conversation_id}):
            found.append({"collection": name, **document})
    return found


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
    assert await _leftovers(database, conversation_id) == []


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
    assert await _leftovers(database, conversation_id) == []
    assert (await api.http.get(f"/conversations/{conversation_id}")).status_code == 404


async def test_delete_of_an_unknown_conversation_is_404(api: ApiClient) -> None:
    response = await api.http.delete(f"/conversations/{new_conversation_id()}")
    assert response.status_code == 404
