"""Coalesced MongoDB writes of replies in progress: one bulk write for every reply that grew.

The first write after a quiet spell goes out at once; later ones at most every `interval`
seconds, so the database sees a bounded write rate however many tokens arrive. Live
subscribers do not wait for these writes: the API keeps the tail of each reply in memory.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from services.responder.reply import Reply
from shared.store.replies import ReplyStore
from shared.tasks import background

log = logging.getLogger(__name__)


class ProgressWriter:
    def __init__(self, store: ReplyStore, interval: float) -> None:
        self._store = store
        self._interval = interval
        self._dirty: dict[str, Reply] = {}
        self._wake = asyncio.Event()

    def mark(self, reply: Reply) -> None:
        self._dirty[reply.id] = reply
        self._wake.set()

    def forget(self, reply: Reply) -> None:
        """The reply's final write is the caller's; drop what is still queued for it."""
        self._dirty.pop(reply.id, None)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["ProgressWriter"]:
        async with background(self._run()):
            yield self

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            replies, self._dirty = list(self._dirty.values()), {}
            try:
                await self._store.save_progress([reply.progress() for reply in replies])
            except Exception as error:  # MongoDB is away; keep the replies for the next round
                log.warning("saving %d replies in progress failed: %s", len(replies), error)
                for reply in replies:
                    self._dirty.setdefault(reply.id, reply)
                self._wake.set()
            await asyncio.sleep(self._interval)
