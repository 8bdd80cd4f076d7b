"""RabbitMQ topology, declared once here for every process that touches the broker."""

import asyncio
import itertools
import time
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    DeliveryMode,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import ChannelPreconditionFailed
from aio_pika.robust_connection import RobustConnection

from shared.redaction import redact
from shared.schemas import ChatJob, StopRequest, TurnFreed
from shared.startup import DependencyUnavailable, StartupError

CHAT_QUEUE = "chat-message"
DEAD_LETTER_EXCHANGE = "chat-message.dead-letter"
DEAD_LETTER_QUEUE = "chat-message.dead"
EVENTS_EXCHANGE = "chat-events"
CONTROL_EXCHANGE = "chat-control"
# Quorum queues are replicated to a majority of the cluster's nodes and survive any minority
# of them; on one node they behave like a durable classic queue.
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
# A job delivered this often (crashes, hand-backs) is a poison message: it is dead-lettered.
# RabbitMQ 4's own default, made explicit so every version behaves alike.
CHAT_DELIVERY_LIMIT = 20
SENT_AT_HEADER = "x-sent-at-us"  # microseconds since the epoch, when an event batch left
QUORUM_MIGRATION = "docs/operations.md#upgrading-chat-message-to-a-quorum-queue"

CONFIRM_TIMEOUT_SECONDS = 2.0
"""How long a publish on a request's path waits for the broker: a job left unconfirmed stays
in the outbox, a stop request answers with an error."""
EVENTS_RESEND_SECONDS = 1.0
"""A batch of live events not confirmed by then is sent again; the API drops the repeats."""


def node_urls(setting: str) -> list[str]:
    """RABBITMQ_URL: one node's URL, or the nodes of one cluster separated by commas."""
    urls = [part.strip() for part in setting.split(",") if part.strip()]
    for url in urls or [setting]:
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as error:
            raise DependencyUnavailable(
                "RABBITMQ_URL", setting, f"not a valid URL: {error}"
            ) from None
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise DependencyUnavailable("RABBITMQ_URL", setting, "not an amqp://host/ URL")
    return urls


class FailoverConnection(RobustConnection):
    """A robust connection to one node of a cluster at a time, trying the next on each attempt.

    aio-pika's robust connection reconnects to its one URL only (aio-pika issue 141). Its
    reconnection loop opens every transport through one private method; moving to the next
    node there keeps everything else it restores (channels, queues, consumers) untouched.
    `tests/unit/test_failover.py` checks the hook against the pinned aio-pika.
    """

    def __init__(self, urls: Sequence[str], **kwargs: Any) -> None:
        super().__init__(make_url(urls[0]), **kwargs)
        self._nodes = itertools.cycle([make_url(url) for url in urls])

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = next(self._nodes)
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


async def connect(setting: str, timeout: float) -> AbstractRobustConnection:
    """Connect at start-up to the first node that answers, and check the work queue there;
    afterwards the connection moves to the next node by itself whenever it loses its node.
    """
    urls = node_urls(setting)
    deadline = time.monotonic() + timeout
    failures: list[str] = []
    for index in range(len(urls)):
        order = urls[index:] + urls[:index]
        connection = FailoverConnection(order)
        remaining = max(deadline - time.monotonic(), 0.0) / (len(urls) - index)
        try:
            await asyncio.wait_for(connection.connect(), remaining)
        except TimeoutError:
            failures.append(f"{redact(order[0])}: no answer within {remaining:.3g}s")
        except (OSError, ValueError, aio_pika.exceptions.AMQPError) as error:
            failures.append(f"{redact(order[0])}: {type(error).__name__}: {error}".rstrip(": "))
        else:
            await _check_chat_queue(connection)
            return connection
        await connection.close()
    raise DependencyUnavailable("RABBITMQ_URL", setting, "; ".join(failures))


async def _check_chat_queue(connection: AbstractRobustConnection) -> None:
    """Fail start-up cleanly, connection closed, if the queues differ from what we declare."""
    try:
        async with connection.channel() as channel:
            await declare_chat_queue(channel)
    except StartupError:
        await connection.close()
        raise


async def declare_chat_queue(channel: AbstractChannel) -> AbstractQueue:
    """The replicated work queue; deliveries rejected for good go to the dead-letter queue."""
    try:
        dead_letters = await channel.declare_exchange(
            DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True, arguments=QUORUM)
        await dead_queue.bind(dead_letters)
        return await channel.declare_queue(
            CHAT_QUEUE,
            durable=True,
            arguments={
                **QUORUM,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
                "x-delivery-limit": CHAT_DELIVERY_LIMIT,
            },
        )
    except ChannelPreconditionFailed as error:
        raise StartupError(
            f"RabbitMQ refused the {CHAT_QUEUE} queues as declared ({error}); a deployment "
            f"from before quorum queues has classic ones: migrate them, see {QUORUM_MIGRATION}"
        ) from error


async def declare_events_exchange(channel: AbstractChannel) -> AbstractExchange:
    return await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


async def declare_control_exchange(channel: AbstractChannel) -> AbstractExchange:
    """Every responder hears every control message; the one writing the reply acts on it."""
    return await channel.declare_exchange(
        CONTROL_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )


class Sink(Protocol):
    """Where messages go: an exchange (in unit tests, a recorder)."""

    async def publish(self, message: aio_pika.Message, routing_key: str) -> object: ...


CONTROL_TYPES: dict[type[StopRequest | TurnFreed], str] = {
    StopRequest: "stop",
    TurnFreed: "turn-freed",
}


async def publish_control(exchange: Sink, message: StopRequest | TurnFreed) -> None:
    """Every responder hears it; the message's kind travels as its AMQP `type`."""
    body = message.model_dump_json().encode()
    kind = CONTROL_TYPES[type(message)]
    await exchange.publish(
        aio_pika.Message(body, content_type="application/json", type=kind), routing_key=""
    )


def read_control(delivery: AbstractIncomingMessage) -> StopRequest | TurnFreed:
    """Raises ValidationError for a malformed body. A message without a kind is a stop
    request: stop requests were the only control messages before turn notices."""
    if delivery.type == CONTROL_TYPES[TurnFreed]:
        return TurnFreed.model_validate_json(delivery.body)
    return StopRequest.model_validate_json(delivery.body)


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


async def publish_events(exchange: Sink, body: bytes) -> None:
    """One batch of events, stamped with when it left, so the relay can measure its lag."""
    message = aio_pika.Message(
        body, content_type="application/json", headers={SENT_AT_HEADER: time.time_ns() // 1000}
    )
    await exchange.publish(message, routing_key="")


def publish_lag(delivery: AbstractIncomingMessage) -> float | None:
    """Seconds from an event batch's publish to now (None if it carries no stamp)."""
    sent = delivery.headers.get(SENT_AT_HEADER)
    if not isinstance(sent, int):
        return None
    return max(time.time_ns() // 1000 - sent, 0) / 1_000_000
