"""Leases on replies: renewed while this responder writes them, enforced on abandoned ones.

A responder that dies is noticed by the broker, which redelivers its jobs; one that hangs is
not. Its lease then runs out, and a reply nobody took over within another lease period is
ended as failed, so no reply stays `streaming` forever.
"""

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import structlog

from services.responder.metrics import count_finished
from services.responder.output import ReplyOutput
from services.responder.turn_order import TurnOrder
from services.responder.usage import given_up_ending
from shared.events import finished_event
from shared.keys import key_of_message
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
    store: ReplyStore,
    output: ReplyOutput,
    turns: TurnOrder,
    held: Callable[[], list[str]],
    lease: timedelta,
) -> None:
    """Fail replies whose lease ran out long ago; never our own, whose renewal may be late."""
    while True:
        await asyncio.sleep(lease.total_seconds() / 2)
        try:
            ours = set(held())
            for reply in await store.abandoned(grace=lease):
                if reply.message.id in ours:
                    continue  # MongoDB was away; the lease keeper renews it on its next round
                failed = await store.give_up(reply.message, ABANDONED, given_up_ending(reply))
                if failed is not None:
                    count_finished(failed)
                    turns.finished(key_of_message(failed))
                    with structlog.contextvars.bound_contextvars(
                        conversationId=failed.conversation_id, messageId=failed.id
                    ):
                        log.warning("reply %s was abandoned; ended as failed", failed.id)
                    output.post(finished_event(failed))
        except Exception as error:
            log.warning("looking for abandoned replies failed: %s", error)
