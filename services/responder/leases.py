"""Leases on replies: renewed while this responder writes them, enforced on abandoned ones.

A responder that dies is noticed by the broker, which redelivers its jobs; one that hangs is
not. Its lease then runs out, and a reply nobody took over within another lease period is
ended as failed, so no reply stays `streaming` forever.
"""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from services.responder.ending import Endings
from shared.store.replies import ReplyStore

log = logging.getLogger(__name__)

ABANDONED = "the responder writing this reply stopped responding; ask again"


async def keep_leases(store: ReplyStore, held: Callable[[], list[str]], lease: timedelta) -> None:
    while True:
        await asyncio.sleep(lease.total_seconds() / 3)
        try:
            await store.renew_leases(held(), lease)
        except Exception as error:
            log.warning("renewing leases failed: %s", error)


async def end_abandoned(
    store: ReplyStore, endings: Endings, held: Callable[[], list[str]], lease: timedelta
) -> None:
    """Fail replies whose lease ran out long ago; never our own, whose renewal may be late."""
    while True:
        await asyncio.sleep(lease.total_seconds() / 2)
        try:
            ours = set(held())
            for reply in await store.abandoned(grace=lease):
                if reply.message.id in ours:
                    continue  # MongoDB was away; the lease keeper renews it on its next round
                await endings.give_up(reply, ABANDONED)
        except Exception as error:
            log.warning("looking for abandoned replies failed: %s", error)
