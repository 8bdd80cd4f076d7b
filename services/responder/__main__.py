"""`python -m services.responder`: consume chat-message and stream replies."""

import asyncio
import logging
import signal

import uvloop

from services.responder.model import ChatModel
from services.responder.progress import ProgressWriter
from services.responder.publisher import EventPublisher
from services.responder.worker import Worker
from shared import broker, store
from shared.settings import Settings, get_settings
from shared.startup import run_service

log = logging.getLogger("responder")


async def serve(settings: Settings) -> None:
    timeout = settings.startup_timeout_seconds
    database = await store.connect(settings.mongodb_url, settings.mongodb_db, timeout)
    messages = store.MessageStore(database)
    await messages.ensure_indexes()
    model = ChatModel(settings)
    await model.check(timeout)
    connection = await broker.connect(settings.rabbitmq_url, timeout)
    async with connection:
        events = await broker.declare_events_exchange(await connection.channel())
        jobs_channel = await connection.channel()
        await jobs_channel.set_qos(prefetch_count=settings.responder_concurrency)
        jobs = await broker.declare_chat_queue(jobs_channel)
        async with (
            ProgressWriter(messages, settings.store_flush_seconds).running() as writer,
            EventPublisher(events, on_sealed=writer.mark).running() as publisher,
        ):
            worker = Worker(settings, messages, model, publisher, writer)
            await jobs.consume(worker.handle)
            log.info(
                "consuming %s with up to %d replies at once",
                broker.CHAT_QUEUE,
                settings.responder_concurrency,
            )
            await _stopped()
    await model.close()
    await database.client.close()


async def _stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvloop.run(serve(get_settings()))


if __name__ == "__main__":
    run_service("responder", main)
