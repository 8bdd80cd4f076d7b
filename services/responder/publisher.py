"""Coalescing publisher of live events onto the fanout exchange.

A batch goes out at once when nothing is in flight. Tokens that arrive while a publish awaits
its confirm gather in their reply and are sealed into one delta for the next batch, so an idle
system adds no latency and a busy one sends fewer, larger deltas, many replies to one AMQP
message. A failed publish is retried in order, so a broker outage delays events instead of
tearing holes in the `seq` sequence.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from aio_pika.abc import AbstractExchange
from tenacity import AsyncRetrying, before_sleep_log, stop_after_delay, wait_exponential

from services.responder.reply import Reply
from shared.broker import publish_events
from shared.events import Event, MessageEvent, encode_batch
from shared.tasks import background

log = logging.getLogger(__name__)

GIVE_UP_SECONDS = 300
PUBLISH_TIMEOUT_SECONDS = 1.0
"""A publish not confirmed by then is sent again; the API drops the duplicates by `seq`."""


class EventPublisher:
    def __init__(self, exchange: AbstractExchange, on_sealed: Callable[[Reply], None]) -> None:
        self._exchange = exchange
        self._on_sealed = on_sealed
        self._pending: list[Event] = []
        self._growing: dict[str, Reply] = {}
        self._sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake = asyncio.Event()

    def token(self, reply: Reply, text: str) -> None:
        reply.append(text)
        self._growing[reply.id] = reply
        self._wake.set()

    def seal(self, reply: Reply) -> None:
        """Queue the reply's last tokens now, so its final state can be stored and announced."""
        self._growing.pop(reply.id, None)
        self._seal(reply)

    def post(self, event: MessageEvent) -> None:
        """Queue a whole-message event behind what came before it."""
        self._pending.append(event)
        self._wake.set()

    async def send(self, event: MessageEvent) -> None:
        """Queue a whole-message event, and return once it is published."""
        self.post(event)
        await asyncio.shield(self._sent)

    def _seal_growing(self) -> None:
        growing, self._growing = self._growing, {}
        for reply in growing.values():
            self._seal(reply)

    def _seal(self, reply: Reply) -> None:
        delta = reply.seal()
        if delta is not None:
            self._pending.append(delta)
            self._on_sealed(reply)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["EventPublisher"]:
        async with background(self._run()):
            yield self

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._seal_growing()
            batch, self._pending = self._pending, []
            sent, self._sent = self._sent, asyncio.get_running_loop().create_future()
            if batch:
                await self._publish(batch)
            sent.set_result(None)

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
                    self._seal_growing()  # while the broker is away, MongoDB still gets the text
                    async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                        await publish_events(self._exchange, body)
        except Exception:
            log.exception("dropped %d live events: the broker stayed away", len(batch))
