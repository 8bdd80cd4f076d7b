"""One `chat-message` delivery in, one stored and streamed assistant reply out."""

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from aio_pika.abc import AbstractIncomingMessage
from aio_pika.exceptions import ChannelInvalidStateError
from openai.types.chat import ChatCompletionMessageParam
from pydantic import ValidationError
from pymongo.errors import PyMongoError

from services.responder.context import Context, build_context
from services.responder.draft import Draft
from services.responder.ending import Endings
from services.responder.metrics import (
    LEASE_TAKEOVERS,
    MODEL_ERRORS,
    REDELIVERIES,
    first_token,
)
from services.responder.model import ChatModel, ModelError, StreamEnd
from services.responder.output import ReplyOutput
from services.responder.turn_order import TurnOrder
from services.responder.usage import FINISHED_WITHOUT_REASON, final_usage
from shared.batches import BatchedCalls
from shared.events import UPDATED, message_event
from shared.keys import key_of_message
from shared.logs import about_message
from shared.schemas import FINISH_ERROR, FINISH_STOPPED, FINISHED, ChatJob, Message, Status
from shared.settings import Settings
from shared.store.replies import Ending, ReplyStore, StoredReply
from shared.store.starts import Claim, StartStore
from shared.tasks import background

log = logging.getLogger(__name__)

FIRST_POLL_SECONDS = 0.01
LONGEST_POLL_SECONDS = 0.5
RETRY_PAUSE_SECONDS = 1.0


def poll_delays() -> Iterator[float]:
    """How often a reply another responder holds is looked at again: soon at first, so one it
    lets go of is taken at once; then patiently, until its lease runs out."""
    delay = FIRST_POLL_SECONDS
    while True:
        yield delay
        delay = min(delay * 2, LONGEST_POLL_SECONDS)


class Settlement(enum.Enum):
    """What becomes of a `chat-message` delivery once its reply is dealt with."""

    ACK = enum.auto()
    DEAD_LETTER = enum.auto()
    REQUEUE = enum.auto()


@dataclass
class Job:
    """A reply this responder works on, and the delivery to settle for it.

    The reply runs in a task of the worker's own, not in the consumer callback: aiormq cancels
    callbacks when their channel closes, and a broker blip must not stop a reply mid-stream.
    After a reconnection the broker delivers the job again; that delivery then replaces the
    one whose channel is gone.
    """

    delivery: AbstractIncomingMessage
    reply_id: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    generation: asyncio.Task[None] | None = None
    stopping: bool = False
    handing_back: bool = False


def settleable(delivery: AbstractIncomingMessage) -> bool:
    try:
        return delivery.channel is not None
    except ChannelInvalidStateError:
        return False


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: ReplyStore,
        starts: StartStore,
        model: ChatModel,
        output: ReplyOutput,
        turns: TurnOrder,
    ) -> None:
        self.settings = settings
        self.lease = timedelta(seconds=settings.reply_lease_seconds)
        self.store = store
        self.model = model
        self.output = output
        self.turns = turns
        self.endings = Endings(store, output, turns)
        self.jobs: dict[str, Job] = {}
        self._replies = BatchedCalls(starts.get_replies)
        self._paths = BatchedCalls(starts.paths_if_next)
        self._claims = BatchedCalls(functools.partial(starts.claim_replies, lease=self.lease))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["Worker"]:
        """Starts go by batch: a burst of jobs costs a few round trips, not a few per job."""
        async with background(self._replies.serve(), self._paths.serve(), self._claims.serve()):
            yield self

    @property
    def held_replies(self) -> list[str]:
        return [job.reply_id for job in self.jobs.values() if job.reply_id is not None]

    async def handle(self, delivery: AbstractIncomingMessage) -> None:
        try:
            request = ChatJob.model_validate_json(delivery.body)
        except ValidationError as error:
            log.error("dead-lettering a malformed chat-message: %s", error)
            await delivery.reject(requeue=False)
            return
        if delivery.redelivered:
            REDELIVERIES.inc()
        job = self.jobs.get(request.message_id)
        if job is None:
            job = self.jobs[request.message_id] = Job(delivery)
            job.task = asyncio.create_task(self._run(request, job))
        elif settleable(job.delivery):
            await delivery.ack()  # a duplicate, say from the outbox, of a job already in hand
        else:
            job.delivery = delivery

    async def _run(self, request: ChatJob, job: Job) -> None:
        """Acknowledge only once the reply is finished in MongoDB, so a crash redelivers it."""
        about_message(request.conversation_id, request.message_id)
        try:
            settlement = await self.respond(request, job)
        except asyncio.CancelledError:
            if not job.handing_back:
                raise
            settlement = await self._hand_back(job)
        except Exception:
            log.exception("reply %s failed unexpectedly; handing it back", request.message_id)
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
            settlement = await self._hand_back(job)
        finally:
            del self.jobs[request.message_id]
        try:
            if settlement is Settlement.ACK:
                await job.delivery.ack()
            else:
                await job.delivery.nack(requeue=settlement is Settlement.REQUEUE)
        except Exception as error:  # the channel closed: the broker will redeliver, harmlessly
            log.warning("settling chat-message for %s failed: %s", request.message_id, error)

    async def _hand_back(self, job: Job) -> Settlement:
        """Let another responder take the reply at once instead of after its lease."""
        if job.reply_id is not None:
            with contextlib.suppress(PyMongoError):
                await self.store.release(job.reply_id)
        return Settlement.REQUEUE

    async def respond(self, request: ChatJob, job: Job) -> Settlement:
        reply = await self._replies(request.message_id)
        if reply is None:
            log.warning("chat-message for unknown reply %s: nothing to do", request.message_id)
            return Settlement.ACK
        history = await self._wait_turn(reply)
        settings = self.settings
        context = build_context(history, settings.system_prompt, settings.context_tokens)
        delays = poll_delays()
        while True:
            if reply is None or reply.message.status in FINISHED:
                return Settlement.ACK  # a redelivery of a reply already finished
            attempts = reply.message.attempt
            if attempts >= settings.reply_max_attempts:
                if await self.endings.give_up(reply, f"gave up after {attempts} attempts"):
                    return Settlement.DEAD_LETTER
            elif claimed := await self._claims(Claim(reply, context.tokens, self.model.model)):
                break
            # another responder holds it: wait for it or for its lease to run out
            await asyncio.sleep(next(delays))
            reply = await self._replies(request.message_id)
        job.reply_id = claimed.message.id
        if claimed.message.attempt > 1:
            LEASE_TAKEOVERS.inc()
        self.output.post(message_event(UPDATED, claimed.message))
        await self._stream(claimed, context, job)
        return Settlement.ACK

    async def _wait_turn(self, reply: StoredReply) -> list[Message]:
        """Replies in a conversation are written one at a time, in the order they were asked.

        Returns the reply's context, read once every earlier reply has finished: the path from
        the conversation's first message to the user message it answers (its branch only).
        """
        path = await self.turns.wait(
            key_of_message(reply.message), reply.order, lambda: self._paths(reply)
        )
        return path[-self.settings.context_messages :]

    async def _stream(self, claimed: StoredReply, context: Context, job: Job) -> None:
        draft = Draft(claimed.message)
        end = StreamEnd()
        status, error = Status.COMPLETED, None
        job.stopping = job.stopping or claimed.stop_requested
        prompt_tokens = 0
        if not job.stopping:
            prompt_tokens = context.tokens
            job.generation = asyncio.create_task(self._generate(draft, context.messages, end))
            try:
                await job.generation
            except ModelError as failure:
                status, error = Status.FAILED, str(failure)
                MODEL_ERRORS.labels(failure.kind).inc()
                log.warning("reply %s failed: %s", draft.id, error)
            except asyncio.CancelledError:
                if not job.stopping:
                    raise
        self.output.close(draft)
        progress = draft.progress()
        if status is Status.FAILED:
            reason = FINISH_ERROR
        elif job.stopping:
            reason = FINISH_STOPPED
        else:
            reason = end.finish_reason or FINISHED_WITHOUT_REASON
        usage = final_usage(end.usage, prompt_tokens, progress.text, progress.reasoning)
        ending = Ending(reason, usage, end.model or claimed.message.model)
        await self.endings.finish(draft.message, progress, status, ending, error, job.stopping)

    async def _generate(
        self, draft: Draft, messages: list[ChatCompletionMessageParam], end: StreamEnd
    ) -> None:
        token = self.output.token
        asked, first = time.monotonic(), True
        async for text, reasoning in self.model.stream(messages, end):
            if first:
                first_token(draft.message, time.monotonic() - asked)
                first = False
            token(draft, text, reasoning)

    def stop(self, message_id: str) -> None:
        """Stop generating a reply written here, keeping its text; other responders ignore it."""
        job = self.jobs.get(message_id)
        if job is not None:
            job.stopping = True
            if job.generation is not None:
                job.generation.cancel()

    async def drain(self, grace: float) -> None:
        """Let replies in progress finish within `grace`; hand the rest back to the queue."""
        tasks = [job.task for job in self.jobs.values() if job.task is not None]
        if tasks:
            log.info("finishing %d replies before exiting (up to %.0fs)", len(tasks), grace)
            _, late = await asyncio.wait(tasks, timeout=grace)
            for job in self.jobs.values():
                job.handing_back = True
                if job.task is not None:
                    job.task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
