"""The broker topology of the contract, as RabbitMQ itself reports it."""

import asyncio

import pytest

from shared.schemas import Status
from tests.helpers import (
    ApiClient,
    eventually,
    new_conversation_id,
    prompt,
    queue_settled,
    queue_stats,
    rabbitmq_table,
)
from tests.infra import Deployment


@pytest.fixture
def vhost(stack: Deployment) -> str:
    if stack.broker.vhost is None:
        pytest.skip("needs rabbitmqctl and a local broker to inspect the topology")
    return stack.broker.vhost


async def test_chat_message_is_a_durable_shared_work_queue(vhost: str) -> None:
    queues = await asyncio.to_thread(
        rabbitmq_table, vhost, "list_queues", "name", "type", "durable"
    )
    (chat,) = [queue for queue in queues if queue["name"] == "chat-message"]
    (dead,) = [queue for queue in queues if queue["name"] == "chat-message.dead"]
    # A quorum queue is never exclusive and keeps every message on disk, replicated over a
    # cluster's nodes.
    assert chat["type"] == dead["type"] == "quorum"
    assert chat["durable"] is True

    async def consumed() -> bool:  # a quorum queue's counts reach rabbitmqctl a little late
        stats = await asyncio.to_thread(queue_stats, vhost, "chat-message")
        return stats["consumers"] >= 1

    await eventually(consumed, what="a responder consuming chat-message")


async def test_events_go_through_a_durable_fanout_with_one_exclusive_queue_per_api(
    vhost: str, stack: Deployment
) -> None:
    exchanges = await asyncio.to_thread(
        rabbitmq_table, vhost, "list_exchanges", "name", "type", "durable"
    )
    (events,) = [exchange for exchange in exchanges if exchange["name"] == "chat-events"]
    assert (events["type"], events["durable"]) == ("fanout", True)

    bindings = await asyncio.to_thread(
        rabbitmq_table, vhost, "list_bindings", "source_name", "destination_name"
    )
    bound = {row["destination_name"] for row in bindings if row["source_name"] == "chat-events"}
    queues = await asyncio.to_thread(rabbitmq_table, vhost, "list_queues", "name", "exclusive")
    exclusive = {queue["name"] for queue in queues if queue["exclusive"]}
    assert len(bound) == len(stack.api_urls), "one queue per API instance"
    assert bound <= exclusive


async def test_a_job_stays_unacknowledged_and_persistent_until_its_reply_is_finished(
    vhost: str, api: ApiClient
) -> None:
    """Acknowledged only once the reply is stored finished: a crash mid-reply redelivers it.

    A quorum queue persists every message (the queue type is checked above). Its counts reach
    rabbitmqctl up to a few seconds late, so the reply streams for 12 s and the test waits for
    the counts to show the job in a responder's hands while the reply is still streaming.
    """
    accepted = await api.post_chat(
        prompt("in flight", tokens=600, delay_ms=20), new_conversation_id()
    )

    async def streaming() -> bool:
        reply = await api.message(accepted.conversation_id, accepted.message_id)
        return reply.status == Status.STREAMING and reply.seq > 0

    await eventually(streaming, what="the reply to stream")

    async def held_by_a_responder() -> bool:
        stats = await asyncio.to_thread(queue_stats, vhost, "chat-message")
        return stats["messages_unacknowledged"] == 1 and stats["messages_ready"] == 0

    await eventually(held_by_a_responder, what="the job to be unacknowledged, none ready")
    reply = await api.message(accepted.conversation_id, accepted.message_id)
    assert reply.status == Status.STREAMING, "precondition: still streaming after the look"

    finished = await api.finished(accepted.conversation_id, accepted.message_id, timeout=30)
    assert finished.status == Status.COMPLETED
    await eventually(lambda: queue_settled(vhost), what="the job to be acknowledged")
