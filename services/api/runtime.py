"""What the routes work with: MongoDB, the broker, the relay hub and the turn pipeline.

Opened before the server accepts its first request, closed after its last.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue, AbstractRobustConnection

from services.api.hub import Hub
from services.api.turns import Turns
from shared import broker
from shared.events import Event, encode_batch
from shared.schemas import StopRequest, TurnFreed
from shared.settings import Settings
from shared.store.conversations import ConversationStore
from shared.store.database import Database, connect, ping
from shared.store.turns import TurnStore
from shared.store.upgrade import upgrade

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    database: Database
    conversations: ConversationStore
    turn_store: TurnStore
    connection: AbstractRobustConnection
    channel: AbstractChannel
    events: AbstractExchange
    control: AbstractExchange
    live: AbstractQueue
    hub: Hub
    turns: Turns

    @classmethod
    async def open(cls, settings: Settings) -> "Runtime":
        timeout = settings.startup_timeout_seconds
        database = await connect(settings.mongodb_url, settings.mongodb_db, timeout)
        conversations = ConversationStore(database, settings.openai_model)
        turn_store = TurnStore(database)
        await conversations.ensure_indexes()
        await turn_store.ensure_indexes()
        await upgrade(database)
        connection = await broker.connect(settings.rabbitmq_url, timeout)
        channel = await connection.channel()
        live_channel = await connection.channel(publisher_confirms=False)
        events = await broker.declare_events_exchange(live_channel)
        control = await broker.declare_control_exchange(channel)
        await broker.declare_chat_queue(channel)
        live = await channel.declare_queue(exclusive=True, auto_delete=True)
        await live.bind(events)
        hub = Hub(conversations, settings.subscriber_buffer, settings.relay_deaf_seconds)
        turns = Turns(turn_store, channel, events)
        return cls(
            database,
            conversations,
            turn_store,
            connection,
            channel,
            events,
            control,
            live,
            hub,
            turns,
        )

    async def announce(self, event: Event) -> None:
        """Tell every instance's subscribers about a change made here, not by a responder."""
        async with asyncio.timeout(broker.CONFIRM_TIMEOUT_SECONDS):
            await broker.publish_events(self.events, encode_batch([event]))

    async def publish_control(self, message: StopRequest | TurnFreed) -> None:
        async with asyncio.timeout(broker.CONFIRM_TIMEOUT_SECONDS):
            await broker.publish_control(self.control, message)

    async def ready(self) -> bool:
        """MongoDB answers, the broker is connected, and the relay hears the fanout."""
        if self.connection.is_closed or not self.connection.connected.is_set():
            return False
        if not self.hub.hears:
            return False
        try:
            async with asyncio.timeout(2.0):
                await ping(self.database)
        except Exception:
            return False
        return True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self.connection.reconnect_callbacks.add(self._reconnected)
        async with self.hub.running(self.live, self.events), self.turns.running():
            yield
        await self.connection.close()
        await self.database.client.close()

    def _reconnected(self, *_: object) -> None:
        log.info("broker connection restored; resynchronising live replies")
        self.hub.resynchronise()
