"""Liveness and readiness: following MongoDB going away and coming back, and a deaf relay."""

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import httpx
import pytest

from devstack.processes import Process
from devstack.stack import Stack, start_secantus
from shared.broker import EVENTS_EXCHANGE
from shared.schemas import Status
from tests.clients import Subscriber
from tests.helpers import (
    ApiClient,
    eventually,
    expected_reply,
    new_conversation_id,
    prompt,
    rabbitmq_table,
)
from tests.infra import rabbitmq, secantus_available, service_env

OUTAGE_TIMEOUT = 30.0
DEAF_SECONDS = 2.0
"""RELAY_DEAF_SECONDS of the deaf-relay test's API: probes after 1 s of silence."""
LOST_QUEUE_DEAF_SECONDS = 600.0
LOST_QUEUE_TOKENS = 300


async def test_healthz_and_readyz_answer_200_while_dependencies_are_up(
    api: ApiClient, api_b: ApiClient
) -> None:
    for client in (api, api_b):
        assert (await client.http.get("/healthz")).status_code == 200
        assert (await client.http.get("/readyz")).status_code == 200


@dataclass
class DatabaseOutage:
    """An API on a MongoDB of its own, which the test stops and starts again on the same port."""

    api_url: str
    database: Process
    database_url: str
    log_dir: Path

    def stop_database(self) -> None:
        self.database.stop()

    def start_database(self) -> None:
        port = urlsplit(self.database_url).port
        self.database, _ = start_secantus(self.log_dir, ":memory:", port=port)


@pytest.fixture
def outage(log_dir: Path, model_url: str) -> Iterator[DatabaseOutage]:
    if not secantus_available():
        pytest.skip("needs secantusd-py to stop and restart a MongoDB of its own")
    own_logs = log_dir / "readyz"
    database, url = start_secantus(own_logs, ":memory:")
    running = DatabaseOutage("", database, url, own_logs)
    try:
        with rabbitmq("chat-test-readyz") as broker:
            stack = Stack(env=service_env(url, broker, model_url), log_dir=own_logs)
            try:
                _, running.api_url = stack.start_api(name="readyz-api")
                yield running
            finally:
                stack.stop()
    finally:
        running.database.stop()


async def test_readyz_follows_mongodb_down_and_back(outage: DatabaseOutage) -> None:
    async with httpx.AsyncClient(base_url=outage.api_url, timeout=10.0) as http:
        api = ApiClient(http)

        async def readiness(expected: int) -> bool:
            return (await http.get("/readyz")).status_code == expected

        assert await readiness(200)
        outage.stop_database()
        await eventually(lambda: readiness(503), OUTAGE_TIMEOUT, what="/readyz 503, no MongoDB")
        assert (await http.get("/healthz")).status_code == 200, "alive, only not ready"

        outage.start_database()
        await eventually(lambda: readiness(200), OUTAGE_TIMEOUT, what="/readyz 200 again")
        text = prompt("after the outage", tokens=1, delay_ms=0)
        accepted = await api.post_chat(text, new_conversation_id())
        user = await api.message(accepted.conversation_id, accepted.user_message_id)
        assert user.message == text, "the API writes to MongoDB again without a restart"


@dataclass
class DeafRelay:
    """An API and a responder on a virtual host of their own, whose fanout the test breaks."""

    api_url: str
    broker_url: str
    vhost: str
    api_log: Path


@contextlib.contextmanager
def relay_stack(
    name: str, log_dir: Path, mongodb_url: str, model_url: str, deaf_seconds: float
) -> Iterator[DeafRelay]:
    with rabbitmq(f"chat-test-{name}") as broker:
        if broker.vhost is None:
            pytest.skip("breaking the fanout needs a virtual host of its own")
        env = service_env(mongodb_url, broker, model_url)
        stack = Stack(env=env, log_dir=log_dir / name)
        try:
            api, api_url = stack.start_api(name=f"{name}-api", RELAY_DEAF_SECONDS=str(deaf_seconds))
            stack.start_responder(name=f"{name}-responder")
            yield DeafRelay(api_url, broker.url, broker.vhost, api.log_path)
        finally:
            stack.stop()


@pytest.fixture
def deaf_relay(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[DeafRelay]:
    with relay_stack("deaf", log_dir, mongodb_url, model_url, DEAF_SECONDS) as relay:
        yield relay


@pytest.fixture
def lost_queue(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[DeafRelay]:
    """An API whose probe would take ten minutes to find it deaf: only noticing the lost
    consumer itself can bring it back within a test's deadline."""
    with relay_stack(
        "lost-queue", log_dir, mongodb_url, model_url, LOST_QUEUE_DEAF_SECONDS
    ) as relay:
        yield relay


async def delete_exchange(broker_url: str, name: str) -> None:
    """What an operator's mistake or a broker failure does: the fanout loses its bindings."""
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)


async def test_readyz_fails_while_the_relay_is_deaf_and_recovers(deaf_relay: DeafRelay) -> None:
    """The connection stays up but the API's queue hears nothing: 503, then it binds anew."""
    async with httpx.AsyncClient(base_url=deaf_relay.api_url, timeout=10.0) as http:
        api = ApiClient(http)

        async def readiness(expected: int) -> bool:
            return (await http.get("/readyz")).status_code == expected

        await eventually(lambda: readiness(200), OUTAGE_TIMEOUT, what="/readyz 200 at first")
        await delete_exchange(deaf_relay.broker_url, EVENTS_EXCHANGE)
        await eventually(
            lambda: readiness(503), OUTAGE_TIMEOUT, interval=0.05, what="/readyz 503, deaf"
        )
        assert (await http.get("/healthz")).status_code == 200, "alive, only not ready"
        await eventually(lambda: readiness(200), OUTAGE_TIMEOUT, what="/readyz 200 again")

        conversation_id = new_conversation_id()
        text = prompt("heard again", tokens=5, delay_ms=5)
        async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
            accepted = await api.post_chat(text, conversation_id)
            reply = await subscriber.until_finished(accepted.message_id)
        assert reply.status == Status.COMPLETED
        assert reply.message == expected_reply(text, 5), "the relay hears live events again"


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=30
    ).stdout


def relay_queue(vhost: str) -> str:
    """The API's own fanout queue: the one queue bound to the events exchange."""
    bindings = rabbitmq_table(vhost, "list_bindings", "source_name", "destination_name")
    (queue,) = {
        str(row["destination_name"]) for row in bindings if row["source_name"] == EVENTS_EXCHANGE
    }
    return queue


def delete_relay_queue(vhost: str) -> None:
    """What an operator's slip in the management UI does: the API's own fanout queue deleted
    (only the broker's CLI may: the queue is exclusive to the API's connection)."""
    rabbitmqctl("delete_queue", "-p", vhost, relay_queue(vhost))


def cut_off(vhost: str) -> None:
    """Drop every connection to the virtual host and refuse new ones (until `let_in`)."""
    rabbitmqctl("clear_permissions", "-p", vhost, "guest")
    for line in rabbitmqctl("list_connections", "pid", "vhost").splitlines():
        pid, connected_to = line.split("\t")
        if connected_to == vhost:
            rabbitmqctl("close_connection", pid, "cut off by the test")


def let_in(vhost: str) -> None:
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


async def test_readyz_fails_when_the_relay_loses_its_queue_and_recovers(
    lost_queue: DeafRelay,
) -> None:
    """The fanout queue deleted under a streaming reply: the relay is unready until it listens
    on the queue declared anew, and its subscriber still gets the reply's exact text."""
    async with httpx.AsyncClient(base_url=lost_queue.api_url, timeout=10.0) as http:
        api = ApiClient(http)

        async def readiness(expected: int) -> bool:
            return (await http.get("/readyz")).status_code == expected

        conversation_id = new_conversation_id()
        text = prompt("queue lost", tokens=LOST_QUEUE_TOKENS, delay_ms=20)
        async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
            accepted = await api.post_chat(text, conversation_id)
            await subscriber.until_words(accepted.message_id, 3)
            await asyncio.to_thread(delete_relay_queue, lost_queue.vhost)
            await eventually(
                lambda: readiness(503), OUTAGE_TIMEOUT, interval=0.02, what="/readyz 503, no queue"
            )
            await eventually(lambda: readiness(200), OUTAGE_TIMEOUT, what="/readyz 200 again")
            reply = await subscriber.until_finished(accepted.message_id, OUTAGE_TIMEOUT)
        assert reply.status == Status.COMPLETED
        assert reply.message == expected_reply(text, LOST_QUEUE_TOKENS)

        after = prompt("heard after the queue came back", tokens=5, delay_ms=5)
        async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
            accepted = await api.post_chat(after, conversation_id)
            reply = await subscriber.until_finished(accepted.message_id)
        assert reply.message == expected_reply(after, 5), "the relay hears live events again"


async def test_a_relay_cut_off_for_long_listens_again_with_one_consumer(
    deaf_relay: DeafRelay,
) -> None:
    """Away from the broker for longer than RELAY_DEAF_SECONDS, the relay replaces its listener
    while the connection is down; once back, its queue has one consumer, not the old one too
    (which would take every other batch and feed nobody), and replies reach subscribers whole."""
    vhost = deaf_relay.vhost
    async with httpx.AsyncClient(base_url=deaf_relay.api_url, timeout=10.0) as http:
        api = ApiClient(http)

        async def readiness(expected: int) -> bool:
            return (await http.get("/readyz")).status_code == expected

        def replaced_while_away() -> bool:
            return "listening anew" in deaf_relay.api_log.read_text()

        await eventually(lambda: readiness(200), OUTAGE_TIMEOUT, what="/readyz 200 at first")
        await asyncio.to_thread(cut_off, vhost)
        try:
            await eventually(lambda: readiness(503), OUTAGE_TIMEOUT, what="/readyz 503, cut off")
            await eventually(replaced_while_away, OUTAGE_TIMEOUT, what="the listener replaced")
        finally:
            await asyncio.to_thread(let_in, vhost)
        await eventually(lambda: readiness(200), OUTAGE_TIMEOUT, what="/readyz 200 again")
        queue = await asyncio.to_thread(relay_queue, vhost)
        queues = await asyncio.to_thread(rabbitmq_table, vhost, "list_queues", "name", "consumers")
        assert [int(row["consumers"]) for row in queues if row["name"] == queue] == [1], queues

        conversation_id = new_conversation_id()
        text = prompt("after the cut", tokens=40, delay_ms=5)
        async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
            accepted = await api.post_chat(text, conversation_id)
            reply = await subscriber.until_finished(accepted.message_id)
        assert reply.message == expected_reply(text, 40), "every batch reaches the relay"
