"""Liveness and readiness, including readiness following MongoDB going away and coming back."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from devstack.processes import Process
from devstack.stack import Stack, start_secantus
from tests.helpers import ApiClient, eventually, new_conversation_id, prompt
from tests.infra import rabbitmq, secantus_available, service_env

OUTAGE_TIMEOUT = 30.0


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
