"""Replies in a conversation are written one at a time, in the order they were asked.

A reply waiting for its turn costs nothing while it waits. Of the replies this responder holds
for a conversation only the earliest looks at MongoDB: when it arrives, when an earlier reply
of the conversation finishes (whoever finished it says so on the control exchange, and every
responder hears it), and, in case such a notice was lost, every `RECHECK_SECONDS`. The others
sleep until it has started or gone. A flooded conversation therefore costs a read per finished
reply, not a read per waiting reply per poll, and other conversations do not notice it.
"""

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from shared import broker
from shared.keys import ConversationKey
from shared.schemas import TurnFreed

log = logging.getLogger(__name__)

T = TypeVar("T")

RECHECK_SECONDS = 5.0


@dataclass(order=True, slots=True)
class _Waiter:
    order: int
    woken: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class TurnOrder:
    def __init__(self, control: broker.Sink, recheck: float = RECHECK_SECONDS) -> None:
        self._control = control
        self._recheck = recheck
        self._waiting: dict[ConversationKey, list[_Waiter]] = {}
        self._notices: set[asyncio.Task[None]] = set()

    async def wait(
        self, key: ConversationKey, order: int, is_next: Callable[[], Awaitable[T | None]]
    ) -> T:
        """`is_next()`'s first answer that is not None, asked only while this reply is the
        earliest one waiting here in its conversation, and only when something may have changed.
        """
        waiter = _Waiter(order)
        queue = self._waiting.setdefault(key, [])
        bisect.insort(queue, waiter)
        try:
            while True:
                if queue[0] is not waiter:
                    await waiter.woken.wait()
                    waiter.woken.clear()
                    continue
                waiter.woken.clear()  # a notice from now on means: look again
                answer = await is_next()
                if answer is not None:
                    return answer
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._recheck):
                        await waiter.woken.wait()
        finally:
            queue.remove(waiter)
            if queue:
                queue[0].woken.set()
            else:
                del self._waiting[key]

    def heard(self, key: ConversationKey) -> None:
        """A reply of `key` finished somewhere: its earliest waiting reply here looks again."""
        queue = self._waiting.get(key)
        if queue:
            queue[0].woken.set()

    def finished(self, key: ConversationKey) -> None:
        """A reply of `key` finished here: wake its successor here, and tell every responder."""
        self.heard(key)
        notice = asyncio.create_task(self._announce(key))
        self._notices.add(notice)
        notice.add_done_callback(self._notices.discard)

    async def _announce(self, key: ConversationKey) -> None:
        notice = TurnFreed(owner=key.owner, conversation_id=key.conversation_id)
        try:
            async with asyncio.timeout(broker.CONFIRM_TIMEOUT_SECONDS):
                await broker.publish_control(self._control, notice)
        except Exception as error:  # its successor looks again within RECHECK_SECONDS anyway
            log.warning("telling the responders a turn is free failed: %s", error)
