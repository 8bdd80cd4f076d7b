"""RABBITMQ_URL as a list of nodes, and the quorum queue met at start-up.

The failover while running is proven on a real cluster in tests/cluster; here, what one node
shows: a dead node first in the list is skipped, and a classic `chat-message` left by an older
deployment stops the service with one line saying what to do.
"""

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import pytest

from devstack.processes import ROOT, child_env, free_port, http_ok, python_module
from devstack.stack import Stack
from shared.broker import CHAT_QUEUE, QUORUM_MIGRATION
from tests.infra import Broker, rabbitmq, service_env

EXIT_DEADLINE = 30.0


@pytest.fixture
def own_broker() -> Iterator[Broker]:
    """A vhost of its own: these tests declare chat-message their own way."""
    with rabbitmq("chat-test-urls") as broker:
        yield broker


def test_a_dead_node_first_in_the_list_is_skipped(
    own_broker: Broker, mongodb_url: str, model_url: str, log_dir: Path
) -> None:
    """Both services start (a service that cannot connect exits 2) and the API is ready."""
    dead = f"amqp://guest:s3cret-pw@127.0.0.1:{free_port()}/"
    env = service_env(mongodb_url, own_broker, model_url)
    env["RABBITMQ_URL"] = f"{dead}, {own_broker.url}"
    stack = Stack(env=env, log_dir=log_dir)
    try:
        responder = stack.start_responder(name="urls-responder")
        _, url = stack.start_api(name="urls-api")
        assert http_ok(f"{url}/readyz")
        assert responder.running()
    finally:
        stack.stop()


async def test_a_classic_chat_message_queue_stops_start_up_with_the_migration(
    own_broker: Broker, mongodb_url: str, model_url: str
) -> None:
    connection = await aio_pika.connect(own_broker.url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(CHAT_QUEUE, durable=True)  # as before quorum queues
    for module in ("services.api", "services.responder"):
        env = child_env(**service_env(mongodb_url, own_broker, model_url))
        completed = await asyncio.to_thread(
            subprocess.run,
            python_module(module),
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=EXIT_DEADLINE,
            check=False,
        )
        lines = completed.stderr.strip().splitlines()
        assert completed.returncode == 2, completed.stderr
        assert len(lines) == 1, completed.stderr
        assert CHAT_QUEUE in lines[0] and QUORUM_MIGRATION in lines[0]
        assert "inequivalent arg" in lines[0], "RabbitMQ's own reason is kept"
