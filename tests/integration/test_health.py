"""Liveness and readiness: following MongoDB going away and coming back, and a deaf relay."""

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
from tests.helpers import ApiClient, eventually, expected_reply, new_conversation_id, prompt
from tests.infra import rabbitmq, secantus_available, service_env

OUTAGE_TIMEOUT = 30.0
DEAF_SECONDS = 2.0
"""RELAY_DEAF_SECONDS of the deaf-relay test's API: probes after 1 s of silence."""


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


@pytest.fixture
def deaf_relay(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[DeafRelay]:
    own_logs = log_dir / "deaf-relay"
    with rabbitmq("chat-test-deaf") as broker:
        if broker.vhost is None:
            pytest.skip("deleting the fanout exchange needs a virtual host of its own")
        env = service_env(mongodb_url, broker, model_url)
        stack = Stack(env=env, log_dir=own_logs)
        try:
            _, api_url = stack.start_api(name="deaf-api", RELAY_DEAF_SECONDS=str(DEAF_SECONDS))
            stack.start_responder(name="deaf-responder")
            yield DeafRelay(api_url, broker.url)
        finally:
            stack.stop()


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
