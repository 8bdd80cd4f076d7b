"""How a reply ends: its final write, and everything that must follow it.

A reply ends in three ways: written to its end here, given up after too many attempts, or
failed for good because the responder writing it stopped answering. Each goes through
`Endings`, so none of them forgets a part: the metrics count it, the next reply of its
conversation may start (here at once, elsewhere by a notice), and its final event goes out.
"""

import structlog
from pymongo.errors import PyMongoError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from services.responder.draft import Progress
from services.responder.metrics import count_finished
from services.responder.output import ReplyOutput
from services.responder.turn_order import TurnOrder
from services.responder.usage import given_up_ending
from shared.events import finished_event
from shared.keys import key_of_message
from shared.schemas import Message, Status
from shared.store.replies import Ending, ReplyStore, StoredReply

events = structlog.get_logger(__name__)

FINISH_RETRY_SECONDS = 120.0


class Endings:
    def __init__(self, store: ReplyStore, output: ReplyOutput, turns: TurnOrder) -> None:
        self.store = store
        self.output = output
        self.turns = turns

    async def finish(
        self,
        reply: Message,
        progress: Progress,
        status: Status,
        ending: Ending,
        error: str | None,
        stopped: bool,
    ) -> Message | None:
        """End the attempt written here; None if another attempt took the reply over meanwhile.

        The final write must land: MongoDB being away for a while only delays it.
        """
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(PyMongoError),
            wait=wait_exponential(multiplier=0.1, max=2),
            stop=stop_after_delay(FINISH_RETRY_SECONDS),
            reraise=True,
        )
        finished = None
        async for attempt in retrying:
            with attempt:
                finished = await self.store.finish_reply(
                    reply, progress, status, ending, error, stopped
                )
        if finished is not None:
            events.info(
                "reply finished",
                status=finished.status.value,
                stopped=finished.stopped,
                attempt=finished.attempt,
                deltas=finished.seq,
            )
            await self._announce(finished)
        return finished

    async def give_up(self, reply: StoredReply, error: str) -> Message | None:
        """Fail a reply nobody holds, keeping its text; None if it is held or finished."""
        failed = await self.store.give_up(reply.message, error, given_up_ending(reply))
        if failed is not None:
            with structlog.contextvars.bound_contextvars(
                conversationId=failed.conversation_id, messageId=failed.id
            ):
                events.warning("reply given up", error=error, attempt=failed.attempt)
            await self._announce(failed)
        return failed

    async def _announce(self, finished: Message) -> None:
        """Returns once the final event is published (or given up on, the broker gone)."""
        count_finished(finished)
        self.turns.finished(key_of_message(finished))
        await self.output.send(finished_event(finished))
