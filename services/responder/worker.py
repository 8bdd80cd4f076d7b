"""One `chat-message` delivery in, one stored and streamed assistant reply out."""

import asyncio
import logging

from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from services.responder.model import ChatModel, ModelError, build_context
from services.responder.progress import ProgressWriter
from services.responder.publisher import EventPublisher
from services.responder.reply import Reply
from shared.events import UPDATED, finished_event, message_event
from shared.schemas import FINISHED, ChatJob, Message, Status
from shared.settings import Settings
from shared.store import MessageStore

log = logging.getLogger(__name__)

TURN_POLL_SECONDS = (0.01, 0.5)


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: MessageStore,
        model: ChatModel,
        publisher: EventPublisher,
        writer: ProgressWriter,
    ) -> None:
        self.settings = settings
        self.store = store
        self.model = model
        self.publisher = publisher
        self.writer = writer

    async def handle(self, delivery: AbstractIncomingMessage) -> None:
        """Acknowledge only once the reply is finished in MongoDB, so a crash redelivers it."""
        try:
            job = ChatJob.model_validate_json(delivery.body)
        except ValidationError as error:
            log.error("dead-lettering a malformed chat-message: %s", error)
            await delivery.reject(requeue=False)
            return
        try:
            await self.respond(job)
        except Exception:
            log.exception("reply %s failed unexpectedly; handing it back", job.message_id)
            await delivery.nack(requeue=True)
        else:
            await delivery.ack()

    async def respond(self, job: ChatJob) -> None:
        pending = await self.store.get_message(job.conversation_id, job.message_id)
        if pending is None:
            log.warning("chat-message for unknown reply %s: nothing to do", job.message_id)
            return
        if pending.status in FINISHED:
            return  # a redelivery of a reply that was already finished
        await self._wait_turn(pending)
        started = await self.store.start_reply(pending.id)
        if started is None:
            return
        await self.publisher.send(message_event(UPDATED, started))
        await self._stream(Reply(started))

    async def _wait_turn(self, reply: Message) -> None:
        """Replies in a conversation are written one at a time, in the order they were asked."""
        delay, longest = TURN_POLL_SECONDS
        while await self.store.has_unfinished_before(reply):
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    async def _stream(self, reply: Reply) -> None:
        history = await self.store.history_before(reply.message, self.settings.context_messages)
        context = build_context(history, self.settings.system_prompt)
        status, error = Status.COMPLETED, None
        try:
            async for text in self.model.stream(context):
                self.publisher.token(reply, text)
        except ModelError as failure:
            status, error = Status.FAILED, str(failure)
            log.warning("reply %s failed: %s", reply.id, error)
        self.publisher.seal(reply)
        self.writer.forget(reply)
        finished = await self.store.finish_reply(reply.progress(), status, error)
        if finished is not None:
            await self.publisher.send(finished_event(finished))
