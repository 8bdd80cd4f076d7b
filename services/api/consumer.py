"""Noticing that the broker cancelled a consumer, which aio-pika's queue iterator does not.

RabbitMQ cancels a consumer whose queue is deleted (by an operator, or by a policy). The
iterator then waits for deliveries that can never come, and aio-pika does not declare the
queue again: the relay would be deaf until its probe noticed. `on_broker_cancel` calls back
at once instead. The callback is armed on the channel under the queue's, and again on the
new one each time a robust channel reopens after a lost connection.
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from aio_pika.abc import AbstractQueue, AbstractQueueIterator, AbstractRobustChannel
from aio_pika.queue import QueueIterator


class CancelFrame(Protocol):
    """What a Basic.Cancel from the broker says: which consumer it ended."""

    @property
    def consumer_tag(self) -> str | None: ...


def consumer_tag(deliveries: AbstractQueueIterator) -> str:
    """The tag of the consumer an open iterator holds (its class says, not the abstract one)."""
    assert isinstance(deliveries, QueueIterator) and deliveries.consumer_tag is not None
    return deliveries.consumer_tag


@contextlib.asynccontextmanager
async def on_broker_cancel(
    queue: AbstractQueue, consumer_tag: str, cancelled: Callable[[], None]
) -> AsyncIterator[None]:
    """Call `cancelled` if the broker cancels `consumer_tag` on `queue` during the block."""
    disarms: list[Callable[[], None]] = []

    def heard(frame: CancelFrame) -> None:
        if frame.consumer_tag == consumer_tag:
            cancelled()

    async def arm(*_: object) -> None:
        callbacks = (await queue.channel.get_underlay_channel()).on_consumer_cancel_callbacks
        callbacks.add(heard)
        disarms.append(lambda: callbacks.discard(heard))

    robust = queue.channel if isinstance(queue.channel, AbstractRobustChannel) else None
    await arm()
    if robust is not None:
        robust.reopen_callbacks.add(arm)
    try:
        yield
    finally:
        if robust is not None:
            robust.reopen_callbacks.discard(arm)
        for disarm in disarms:
            disarm()
