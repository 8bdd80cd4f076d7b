"""This instance's WebSocket subscribers, fed from the fanout exchange (encode/broadcaster's shape).

The hub owns one listener task that reads this instance's fanout queue and hands each event to
the live state of replies (`services.api.live`), which decides what clients must be told.
A subscriber holds only a bounded queue of frames:

    async with hub.subscribe(key) as events:
        async for frame in events:  # the snapshot, then every change after it
            ...

A subscriber that falls more than `capacity` frames behind is dropped: its `overflowed` is set
and its frames end, so one slow client never holds the others back nor grows the server.
The hub also checks that it still hears the fanout (`services.api.hearing`), for readiness, and
keeps its listener running: one that ends (its queue deleted, an error) or goes deaf is replaced
by a new one on the queue declared and bound anew, which first catches up on what it missed.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue

from services.api.consumer import consumer_tag, on_broker_cancel
from services.api.hearing import Hearing
from services.api.live import LiveReplies, StoredMessages, Version, version_of
from services.api.metrics import RELAY_BATCHES, RELAY_LAG
from shared import broker
from shared.broker import publish_lag
from shared.events import CONVERSATION_DELETED, SNAPSHOT, decode_batch, encode_batch
from shared.keys import ConversationKey, key_of
from shared.tasks import background

log = logging.getLogger(__name__)

Frame = tuple[str, Version, str]
"""A frame queued for a client: the message it concerns, the version it brings, its text."""
LAST_FRAME = ""
"""The message id of a frame after which the server closes the stream (`Subscriber.close_code`)."""
NORMAL_CLOSURE = 1000
RESTART_DELAYS = (0.5, 10.0)
"""A listener that ended is replaced after the first delay, doubled while replacements fail
or end quickly, up to the second; one that ran longer than that starts the count again."""
CANCEL_TIMEOUT_SECONDS = 2.0


def encode(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


class Subscriber:
    """One client's frames: its snapshot first, then each queued frame that is news to it.

    The snapshot sets the version the client has of every message; a queued frame that does
    not bring a message past it (queued while the snapshot was read, or a repeat from the
    outbox) is skipped.
    """

    def __init__(self, capacity: int) -> None:
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(capacity)
        self._snapshot: str | None = None
        self._has: dict[str, Version] = {}
        self._ended = False
        self.overflowed = asyncio.Event()
        self.close_code: int | None = None
        """Set when the server ends the stream on purpose: close the socket with this code."""

    def offer(self, frame: Frame) -> bool:
        """Queue a frame; False, and `overflowed` set, if the client is too far behind."""
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed.set()
            return False
        return True

    def start(self, snapshot: str, versions: dict[str, Version]) -> None:
        self._snapshot = snapshot
        self._has = versions

    def end(self) -> None:
        """No more frames: the client unsubscribed."""
        self._ended = True

    def last(self, text: str, close_code: int) -> None:
        """Send `text` after what is queued, then end the stream with `close_code`."""
        if self.offer((LAST_FRAME, (0, 0, 0), text)):
            self.close_code = close_code

    def __aiter__(self) -> "Subscriber":
        return self

    async def __anext__(self) -> str:
        if self._snapshot is not None:
            snapshot, self._snapshot = self._snapshot, None
            return snapshot
        while not (self.overflowed.is_set() or self._ended):
            message_id, version, text = await self._queue.get()
            if message_id == LAST_FRAME:
                self._ended = True
                return text
            has = self._has.get(message_id)
            if has is None or version > has:
                self._has[message_id] = version
                return text
        raise StopAsyncIteration


class Hub:
    def __init__(self, store: StoredMessages, capacity: int, deaf_after: float) -> None:
        self.capacity = capacity
        self.replies = LiveReplies(store, self._send)
        self.hearing = Hearing(deaf_after)
        self._subscribers: dict[ConversationKey, set[Subscriber]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = False

    @contextlib.asynccontextmanager
    async def running(self, queue: AbstractQueue, fanout: AbstractExchange) -> AsyncIterator[None]:
        """Listen to `queue`, bound to the `fanout` exchange, for the block, checking that it
        keeps hearing; then stop listening and repairing."""
        try:
            async with background(self._supervise(queue, fanout), self._keep_hearing(fanout)):
                yield
        finally:
            await self.close()

    @property
    def hears(self) -> bool:
        """The fanout consumer runs and the last probe came back in time: ready to relay."""
        return self._listening and not self.hearing.deaf

    async def close(self) -> None:
        await self.replies.close()

    @contextlib.asynccontextmanager
    async def subscribe(self, key: ConversationKey) -> AsyncIterator[Subscriber]:
        """Registered before the snapshot is read, so nothing falls between the two."""
        subscriber = Subscriber(self.capacity)
        self._subscribers.setdefault(key, set()).add(subscriber)
        try:
            messages = await self.replies.snapshot(key)
            snapshot = {"type": SNAPSHOT, "conversationId": key.conversation_id}
            subscriber.start(
                encode({**snapshot, "messages": messages}),
                {message["id"]: version_of(message) for message in messages},
            )
            yield subscriber
        finally:
            subscriber.end()
            self._unsubscribe(key, subscriber)

    def _unsubscribe(self, key: ConversationKey, subscriber: Subscriber) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[key]

    def receive(self, event: dict[str, Any]) -> None:
        """One event of the fanout, applied to the live replies, which tell the subscribers."""
        if event.get("type") == CONVERSATION_DELETED:
            self._conversation_deleted(event)
        else:
            self.replies.receive(event)

    def _conversation_deleted(self, event: dict[str, Any]) -> None:
        """Tell the conversation's subscribers it is gone, then close their streams (1000)."""
        key = ConversationKey(event["owner"], event["conversationId"])
        frame = encode({"type": CONVERSATION_DELETED, "conversationId": key.conversation_id})
        for subscriber in self._subscribers.pop(key, set()):
            subscriber.last(frame, NORMAL_CLOSURE)

    def resynchronise(self) -> None:
        """After a broker reconnection: catch up on what the fanout missed meanwhile."""
        self.hearing.forget_probe()
        self.replies.resynchronise()

    async def _keep_hearing(self, fanout: AbstractExchange) -> None:
        """Probe a silent fanout; if even the probe goes unheard, replace the listener.

        Readiness fails first (`hears`), so clients go elsewhere while the hub re-subscribes.
        """
        hearing = self.hearing
        while True:
            await asyncio.sleep(hearing.probe_interval)
            try:
                if hearing.deaf_for_long:
                    if self._listening and self._listener is not None:
                        log.warning("the relay hears nothing, not even its probe: listening anew")
                        self._listener.cancel()
                elif hearing.should_probe():
                    hearing.probed()  # before publishing: the echo may come back at once
                    await broker.publish_events(fanout, encode_batch([]))
            except Exception as error:
                log.warning("checking that the relay hears the fanout failed: %s", error)

    async def _supervise(self, queue: AbstractQueue, fanout: AbstractExchange) -> None:
        """Keep a listener on `queue`: whenever one ends, bind the queue anew and start another.

        A listener ends when the broker cancels its consumer (its queue was deleted), when it
        stays deaf (`_keep_hearing` cancels it), or on an error; the next one catches up on the
        replies that moved on meanwhile.
        """
        first, longest = RESTART_DELAYS
        delay = first
        catch_up = False
        while True:
            started = time.monotonic()
            self._listener = asyncio.create_task(self._listen(queue, catch_up))
            (outcome,) = await asyncio.gather(self._listener, return_exceptions=True)
            if isinstance(outcome, Exception):
                log.error("the relay's listener failed: %r; listening anew", outcome)
            if time.monotonic() - started > longest:
                delay = first
            while True:
                await asyncio.sleep(delay)
                delay = min(delay * 2, longest)
                try:
                    async with asyncio.timeout(broker.CONFIRM_TIMEOUT_SECONDS):
                        await fanout.declare()
                        await queue.declare()
                        await queue.bind(fanout)
                    break
                except Exception as error:
                    log.warning("binding the relay's queue anew failed: %r", error)
            catch_up = True

    async def _listen(self, queue: AbstractQueue, catch_up: bool) -> None:
        """Apply what the queue brings, until the broker cancels its consumer or this task is
        cancelled; with `catch_up`, first repair what a previous listener missed."""
        listener = asyncio.current_task()
        assert listener is not None
        async with queue.iterator(no_ack=True) as deliveries:
            tag = consumer_tag(deliveries)
            try:
                async with on_broker_cancel(queue, tag, lambda: self._cancelled(listener)):
                    self._listening = True
                    if catch_up:
                        self.resynchronise()
                    async for delivery in deliveries:
                        self._deliver(delivery)
            finally:
                self._listening = False
                # The iterator skips this on a closed channel, and aio-pika would restore the
                # consumer on reconnection: a second consumer feeding nobody, taking turns.
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                        await queue.cancel(tag)

    def _cancelled(self, listener: asyncio.Task[None]) -> None:
        log.warning("the broker cancelled the relay's consumer (queue deleted?): listening anew")
        listener.cancel()

    def _deliver(self, delivery: AbstractIncomingMessage) -> None:
        self.hearing.heard()
        RELAY_BATCHES.inc()
        lag = publish_lag(delivery)
        if lag is not None:
            RELAY_LAG.observe(lag)
        try:
            events = decode_batch(delivery.body)
        except ValueError as error:
            log.error("dropping an undecodable event batch: %s", error)
            return
        for event in events:
            self.receive(event)
        self.replies.expire_finished()

    def _send(self, message: dict[str, Any], version: Version, event: dict[str, Any]) -> None:
        key = key_of(message)
        subscribers = self._subscribers.get(key)
        if subscribers:
            frame = (message["id"], version, encode(event))
            for subscriber in [s for s in subscribers if not s.offer(frame)]:
                self._unsubscribe(key, subscriber)
