"""Where a reply's text goes: live deltas to the fanout exchange, and its progress to MongoDB.

This is the whole token path. The worker hands each token to `token()`. The publish loop seals
every draft that grew into its next delta as soon as the previous publish is confirmed (an idle
system sends every token at once, a busy one merges what arrived meanwhile into one delta) and
sends the deltas and whole-message events, in order, as one AMQP message. Each sealed draft
then goes to the progress loop, which writes every draft that grew in one bulk write, at most
every `store_interval` seconds, so MongoDB sees a bounded write rate however many tokens
arrive. Live subscribers never wait for those writes: the API keeps the tail of each reply.

A failed publish is retried in order, so a broker outage delays events instead of tearing holes
in the `seq` sequence, and MongoDB keeps getting the text meanwhile.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Protocol

from tenacity import AsyncRetrying, before_sleep_log, stop_after_delay, wait_exponential

from services.responder.draft import Draft, Progress
from shared.batches import Batches
from shared.broker import EVENTS_RESEND_SECONDS, Sink, publish_events
from shared.events import Event, MessageEvent, encode_batch
from shared.tasks import background

log = logging.getLogger(__name__)

GIVE_UP_SECONDS = 300


class ProgressStore(Protocol):
    async def save_progress(self, batch: list[Progress]) -> None: ...


class ReplyOutput:
    def __init__(self, exchange: Sink, store: ProgressStore, store_interval: float) -> None:
        self._exchange = exchange
        self._store = store
        self._store_interval = store_interval
        self._outgoing: Batches[Event | Draft] = Batches()
        """Events in order; a draft stands for its next delta, sealed when the batch goes out."""
        self._growing: dict[str, Draft] = {}
        self._grown: Batches[Draft] = Batches()
        self._sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def token(self, draft: Draft, text: str, reasoning: str = "") -> None:
        if draft.append(text, reasoning):
            self._growing[draft.id] = draft
            self._outgoing.add(draft)

    def close(self, draft: Draft) -> None:
        """Queue the draft's last tokens now; its final write and event are the caller's."""
        draft.closed = True
        self._growing.pop(draft.id, None)
        delta = draft.seal()
        if delta is not None:
            self._outgoing.add(delta)

    def post(self, event: MessageEvent) -> None:
        """Queue a whole-message event behind what came before it."""
        self._outgoing.add(event)

    async def send(self, event: MessageEvent) -> None:
        """Queue a whole-message event, and return once it is published."""
        self.post(event)
        await asyncio.shield(self._sent)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["ReplyOutput"]:
        async with background(self._publish_loop(), self._progress_loop()):
            yield self

    async def _publish_loop(self) -> None:
        async for items in self._outgoing:
            sent, self._sent = self._sent, asyncio.get_running_loop().create_future()
            events = [event for item in items if (event := self._event(item)) is not None]
            if events:
                await self._publish(events)
            sent.set_result(None)

    def _event(self, item: Event | Draft) -> Event | None:
        if not isinstance(item, Draft):
            return item
        self._growing.pop(item.id, None)
        return self._seal(item)

    def _seal(self, draft: Draft) -> Event | None:
        delta = draft.seal()
        if delta is not None and not draft.closed:
            self._grown.add(draft)
        return delta

    def _seal_growing(self) -> None:
        """While the broker is away, MongoDB still gets the text: seal into the next batch."""
        growing, self._growing = self._growing, {}
        for draft in growing.values():
            delta = self._seal(draft)
            if delta is not None:
                self._outgoing.add(delta)

    async def _publish(self, batch: list[Event]) -> None:
        body = encode_batch(batch)
        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=0.05, max=2),
            stop=stop_after_delay(GIVE_UP_SECONDS),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self._seal_growing()
                    async with asyncio.timeout(EVENTS_RESEND_SECONDS):
                        await publish_events(self._exchange, body)
        except Exception:
            log.exception("dropped %d live events: the broker stayed away", len(batch))

    async def _progress_loop(self) -> None:
        """The first write after a quiet spell goes out at once, later ones once per interval."""
        async for grown in self._grown:
            drafts = {draft.id: draft for draft in grown if not draft.closed}
            try:
                await self._store.save_progress([draft.progress() for draft in drafts.values()])
            except Exception as error:  # MongoDB is away; keep the drafts for the next round
                log.warning("saving %d replies in progress failed: %s", len(drafts), error)
                self._grown.extend(drafts.values())
            await asyncio.sleep(self._store_interval)
