"""RabbitMQ topology, declared once here for every process that touches the broker."""

import asyncio
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)

from shared.schemas import ChatJob, StopRequest
from shared.startup import DependencyUnavailable

CHAT_QUEUE = "chat-message"
DEAD_LETTER_EXCHANGE = "chat-message.dead-letter"
DEAD_LETTER_QUEUE = "chat-message.dead"
EVENTS_EXCHANGE = "chat-events"
CONTROL_EXCHANGE = "chat-control"


async def connect(url: str, timeout: float) -> AbstractRobustConnection:
    """Connect once at start-up; after that aio-pika reconnects by itself."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise DependencyUnavailable("RABBITMQ_URL", url, "not an amqp://host/ URL")
    try:
        return await asyncio.wait_for(aio_pika.connect_robust(url), timeout)
    except TimeoutError as error:
        reason = f"no answer within {timeout:g}s"
        raise DependencyUnavailable("RABBITMQ_URL", url, reason) from error
    except (OSError, aio_pika.exceptions.AMQPError) as error:
        raise DependencyUnavailable("RABBITMQ_URL", url, error) from error


async def declare_chat_queue(channel: AbstractChannel) -> AbstractQueue:
    """The durable work queue; deliveries rejected for good go to the dead-letter queue."""
    dead_letters = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead_queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
    await dead_queue.bind(dead_letters)
    return await channel.declare_queue(
        CHAT_QUEUE, durable=True, arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE}
    )


async def declare_events_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def declare_control_exchange(channel: AbstractChannel) -> AbstractExchange:
    """Every responder hears every control message; the one writing the reply acts on it."""
    return await channel.declare_exchange(
        CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def publish_stop(exchange: AbstractExchange, request: StopRequest) -> None:
    await exchange.publish(
        aio_pika.Message(request.model_dump_json().encode(), content_type="application/json"),
        routing_key="",
    )


async def publish_job(channel: AbstractChannel, job: ChatJob) -> None:
    """Persistent and confirmed: the job survives a broker restart once this returns."""
    await channel.default_exchange.publish(
        aio_pika.Message(
            job.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=DeliveryMode.PERSISTENT,
        ),
        routing_key=CHAT_QUEUE,
    )


async def publish_events(exchange: AbstractExchange, body: bytes) -> None:
    await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key="")
