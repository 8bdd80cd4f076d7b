"""`python -m services.responder`: consume chat-message and stream replies."""

import asyncio
import logging
import signal
from datetime import timedelta

import uvloop
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)
from pydantic import ValidationError

from services.responder import tokens
from services.responder.leases import end_abandoned, keep_leases
from services.responder.metrics import metrics_served
from services.responder.model import ChatModel
from services.responder.output import ReplyOutput
from services.responder.turn_order import TurnOrder
from services.responder.worker import Worker
from shared import broker
from shared.keys import ConversationKey
from shared.logs import configure_logging
from shared.schemas import StopRequest
from shared.settings import Settings, get_settings
from shared.startup import run_service
from shared.store.database import connect
from shared.store.replies import ReplyStore
from shared.store.starts import StartStore
from shared.store.upgrade import own_old_messages
from shared.tasks import background

log = logging.getLogger("responder")


async def serve(settings: Settings) -> None:
    timeout = settings.startup_timeout_seconds
    database = await connect(settings.mongodb_url, settings.mongodb_db, timeout)
    messages = ReplyStore(database)
    await messages.ensure_indexes()
    await own_old_messages(database)
    model = ChatModel(settings)
    await model.check(timeout)
    await asyncio.to_thread(tokens.encoding)  # load the tokenizer now, not on the first reply
    connection = await broker.connect(settings.rabbitmq_url, timeout)
    lease = timedelta(seconds=settings.reply_lease_seconds)
    async with (
        connection,
        ReplyOutput(
            await broker.declare_events_exchange(await connection.channel()),
            messages,
            settings.store_flush_seconds,
        ).running() as output,
    ):
        control_channel = await connection.channel()
        control = await broker.declare_control_exchange(control_channel)
        turns = TurnOrder(control)
        worker = Worker(settings, messages, StartStore(database), model, output, turns)
        await _listen_for_control(control_channel, control, worker, turns)
        jobs_channel = await connection.channel()
        await jobs_channel.set_qos(prefetch_count=settings.responder_concurrency)
        jobs = await broker.declare_chat_queue(jobs_channel)
        with metrics_served(
            settings.metrics_port, settings.responder_concurrency, lambda: len(worker.jobs)
        ):
            async with worker.running():
                await _consume(settings, worker, jobs, messages, output, turns, lease)
    await model.close()
    await database.client.close()
    log.info("stopped")


async def _consume(
    settings: Settings,
    worker: Worker,
    jobs: AbstractQueue,
    messages: ReplyStore,
    output: ReplyOutput,
    turns: TurnOrder,
    lease: timedelta,
) -> None:
    """Take jobs until SIGTERM or SIGINT, then finish or hand back the replies in hand."""
    async with background(
        keep_leases(messages, lambda: worker.held_replies, lease),
        end_abandoned(messages, worker.endings, lambda: worker.held_replies, lease),
    ):
        consumer = await jobs.consume(worker.handle)
        log.info(
            "consuming %s, up to %d replies at once",
            broker.CHAT_QUEUE,
            settings.responder_concurrency,
        )
        await _terminated()
        log.info("stopping: no new replies; finishing the ones in progress")
        await jobs.cancel(consumer)
        await worker.drain(settings.shutdown_grace_seconds)


async def _listen_for_control(
    channel: AbstractChannel, control: AbstractExchange, worker: Worker, turns: TurnOrder
) -> None:
    """Stop requests for the replies written here; notices of finished replies, whose
    successors may be waiting here."""
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(control)

    async def on_control(message: AbstractIncomingMessage) -> None:
        try:
            notice = broker.read_control(message)
        except ValidationError as error:
            log.error("ignoring a malformed control message: %s", error)
            return
        if isinstance(notice, StopRequest):
            worker.stop(notice.message_id)
        else:
            turns.heard(ConversationKey(notice.owner, notice.conversation_id))

    await queue.consume(on_control, no_ack=True)


async def _terminated() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    run_service("responder", main)
