"""How a chat turn gets stored and handed to the responders.

Turns go by group commit: the requests that arrive while one batch is in flight go together in
the next, so a burst of posts costs one insert per batch instead of one per post. A request is
answered once its turn is stored; publishing follows in the background, in order, with one
live-event message per batch and a job per reply. The stored reply is the outbox entry (it
stays `published: false` until the broker confirms its job), so a turn whose publish failed,
or whose API instance died first, is published by the outbox relay once the broker is back.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from aio_pika.abc import AbstractChannel, AbstractExchange

from services.api.metrics import OUTBOX_REPLIES
from shared import broker
from shared.batches import Batches
from shared.events import CREATED, encode_batch, message_event
from shared.schemas import ChatJob
from shared.store.turns import Turn, TurnStore
from shared.tasks import background

log = logging.getLogger(__name__)

OUTBOX_POLL_SECONDS = 2.0
MARK_INTERVAL_SECONDS = 1.0
"""Marks go out at most this often, one write for all: well within the outbox's grace."""
OUTBOX_GRACE = timedelta(seconds=5)
"""How long a fresh turn is left to the request that stored it before the outbox steps in."""
OUTBOX_BATCH = 100
"""The most replies the outbox relay publishes on one pass."""


@dataclass
class _Pending:
    turn: Turn
    key: str | None
    stored: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Turns:
    def __init__(self, store: TurnStore, channel: AbstractChannel, events: AbstractExchange):
        self.store = store
        self.channel = channel
        self.events = events
        self._to_store: Batches[_Pending] = Batches()
        self._to_publish: Batches[Turn] = Batches()
        self._to_mark: Batches[str] = Batches()

    async def commit(self, turn: Turn, key: str | None) -> None:
        """Store the turn with the next batch; raises why it was not (a `NotStored`): `key` used
        before, its conversation busy (`ifBusy: reject`), or deleted meanwhile."""
        pending = _Pending(turn, key)
        self._to_store.add(pending)
        await pending.stored

    async def publish(self, turns: list[Turn]) -> None:
        """Announce the new messages live, then queue the replies; failures stay in the outbox."""
        created = [
            message_event(CREATED, message) for turn in turns for message in turn.new_messages
        ]
        try:
            async with asyncio.timeout(broker.CONFIRM_TIMEOUT_SECONDS):
                await broker.publish_events(self.events, encode_batch(created))
                await asyncio.gather(
                    *(broker.publish_job(self.channel, job(turn)) for turn in turns)
                )
        except Exception as error:
            log.warning("%d replies left in the outbox: %s", len(turns), error)
            return
        self._to_mark.extend(turn.reply.id for turn in turns)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        loops = (self._store_batches(), self._publish_batches(), self._mark_published())
        async with background(*loops, self._relay()):
            yield

    async def _store_batches(self) -> None:
        async for batch in self._to_store:
            try:
                refused = await self.store.insert_turns([(item.turn, item.key) for item in batch])
            except Exception as error:
                for item in batch:
                    _settle(item.stored, error)
                continue
            for index, item in enumerate(batch):
                _settle(item.stored, refused.get(index))
            self._to_publish.extend(
                item.turn for index, item in enumerate(batch) if index not in refused
            )

    async def _publish_batches(self) -> None:
        async for turns in self._to_publish:
            await self.publish(turns)

    async def _mark_published(self) -> None:
        async for reply_ids in self._to_mark:
            try:
                await self.store.mark_published(reply_ids)
            except Exception as error:  # the outbox will publish them again, harmlessly
                log.warning("marking %d replies published failed: %s", len(reply_ids), error)
            await asyncio.sleep(MARK_INTERVAL_SECONDS)

    async def _relay(self) -> None:
        """Publish the turns that were stored while the broker was away."""
        while True:
            await asyncio.sleep(OUTBOX_POLL_SECONDS)
            try:
                turns = await self.store.unpublished(OUTBOX_GRACE, OUTBOX_BATCH)
                waiting = len(turns)
                if waiting == OUTBOX_BATCH:  # a full batch: there may be more behind it
                    waiting = await self.store.count_unpublished(OUTBOX_GRACE)
                OUTBOX_REPLIES.set(waiting)
                if turns:
                    log.info("publishing %d replies from the outbox", len(turns))
                    await self.publish(turns)
            except Exception as error:
                log.warning("relaying the outbox failed: %s", error)


def job(turn: Turn) -> ChatJob:
    return ChatJob(
        owner=turn.owner,
        conversation_id=turn.reply.conversation_id,
        user_message_id=turn.user.id,
        message_id=turn.reply.id,
    )


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return  # its request was cancelled
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
