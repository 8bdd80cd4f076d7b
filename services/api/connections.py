"""The API's outside connections, opened before the server accepts its first request."""

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, AbstractRobustConnection

from services.api.relay import Hub
from shared import broker, store
from shared.events import MessageEvent, encode_batch
from shared.schemas import ChatJob
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Connections:
    store: store.MessageStore
    connection: AbstractRobustConnection
    channel: AbstractChannel
    events: AbstractExchange
    live: AbstractQueue
    hub: Hub
    _listener: asyncio.Task[None] | None = field(default=None, init=False)

    @classmethod
    async def open(cls, settings: Settings) -> "Connections":
        timeout = settings.startup_timeout_seconds
        database = await store.connect(settings.mongodb_url, settings.mongodb_db, timeout)
        messages = store.MessageStore(database)
        await messages.ensure_indexes()
        connection = await broker.connect(settings.rabbitmq_url, timeout)
        channel = await connection.channel()
        events = await broker.declare_events_exchange(channel)
        await broker.declare_chat_queue(channel)
        live = await channel.declare_queue(exclusive=True, auto_delete=True)
        await live.bind(events)
        return cls(
            messages, connection, channel, events, live, Hub(messages, settings.subscriber_buffer)
        )

    async def publish_turn(self, created: list[MessageEvent], job: ChatJob) -> None:
        """Announce the new messages live, then hand the reply to a responder."""
        await broker.publish_events(self.events, encode_batch(created))
        await broker.publish_job(self.channel, job)

    async def ready(self) -> bool:
        if self.connection.is_closed or not self.connection.connected.is_set():
            return False
        try:
            await asyncio.wait_for(self.store.ping(), 2.0)
        except Exception:
            return False
        return True

    def start(self) -> None:
        self._listener = asyncio.create_task(self.hub.listen(self.live), name="relay")
        self.connection.reconnect_callbacks.add(self._reconnected)

    def _reconnected(self, *_: object) -> None:
        log.info("broker connection restored; resynchronising live replies")
        self.hub.resynchronise()

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self.hub.close()
        await self.connection.close()
        await self.store.database.client.close()
