"""The API's outside connections, opened before the server accepts its first request."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, AbstractRobustConnection

from services.api.relay import Hub
from shared import broker, store
from shared.events import CREATED, MessageEvent, encode_batch, message_event
from shared.schemas import ChatJob, StopRequest
from shared.settings import Settings
from shared.tasks import background

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 2.0
OUTBOX_POLL_SECONDS = 2.0
OUTBOX_GRACE = timedelta(seconds=5)
"""How long a fresh turn is left to the request that stored it before the outbox steps in."""


@dataclass
class Connections:
    store: store.MessageStore
    connection: AbstractRobustConnection
    channel: AbstractChannel
    events: AbstractExchange
    control: AbstractExchange
    live: AbstractQueue
    hub: Hub

    @classmethod
    async def open(cls, settings: Settings) -> "Connections":
        timeout = settings.startup_timeout_seconds
        database = await store.connect(settings.mongodb_url, settings.mongodb_db, timeout)
        messages = store.MessageStore(database)
        await messages.ensure_indexes()
        connection = await broker.connect(settings.rabbitmq_url, timeout)
        channel = await connection.channel()
        events = await broker.declare_events_exchange(channel)
        control = await broker.declare_control_exchange(channel)
        await broker.declare_chat_queue(channel)
        live = await channel.declare_queue(exclusive=True, auto_delete=True)
        await live.bind(events)
        hub = Hub(messages, settings.subscriber_buffer)
        return cls(messages, connection, channel, events, control, live, hub)

    async def publish_turn(self, turn: store.Turn) -> bool:
        """Announce the new messages live, then hand the reply to a responder.

        False if the broker is away: the turn stays in the outbox and goes out later.
        """
        created = [message_event(CREATED, turn.user), message_event(CREATED, turn.reply)]
        job = ChatJob(
            conversationId=turn.reply.conversation_id,
            userMessageId=turn.user.id,
            messageId=turn.reply.id,
        )
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await broker.publish_events(self.events, encode_batch(created))
                await broker.publish_job(self.channel, job)
        except Exception as error:
            log.warning("reply %s left in the outbox: %s", turn.reply.id, error)
            return False
        await self.store.mark_published(turn.reply.id)
        return True

    async def announce(self, event: MessageEvent) -> None:
        """Tell every instance's subscribers about a change made here, not by a responder."""
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await broker.publish_events(self.events, encode_batch([event]))

    async def publish_stop(self, request: StopRequest) -> None:
        async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
            await broker.publish_stop(self.control, request)

    async def ready(self) -> bool:
        if self.connection.is_closed or not self.connection.connected.is_set():
            return False
        try:
            async with asyncio.timeout(2.0):
                await self.store.ping()
        except Exception:
            return False
        return True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.connection.reconnect_callbacks.add(self._reconnected)
        async with background(self.hub.listen(self.live), self._relay_outbox()):
            yield
        await self.hub.close()
        await self.connection.close()
        await self.store.database.client.close()

    async def _relay_outbox(self) -> None:
        """Publish the turns that were stored while the broker was away."""
        while True:
            await asyncio.sleep(OUTBOX_POLL_SECONDS)
            try:
                for turn in await self.store.unpublished(OUTBOX_GRACE):
                    if not await self.publish_turn(turn):
                        break
                    log.info("published reply %s from the outbox", turn.reply.id)
            except Exception as error:
                log.warning("relaying the outbox failed: %s", error)

    def _reconnected(self, *_: object) -> None:
        log.info("broker connection restored; resynchronising live replies")
        self.hub.resynchronise()
