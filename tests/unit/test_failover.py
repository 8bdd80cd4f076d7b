"""shared.broker.FailoverConnection against the pinned aio-pika: each attempt, the next node.

The reconnection loop of aio-pika's robust connection opens every transport through one
private method; FailoverConnection overrides it. If an aio-pika upgrade renames it, these
tests fail instead of the failover silently stopping (the cluster tests prove the rest).
"""

import asyncio

import pytest
from aio_pika.robust_connection import RobustConnection

from devstack.processes import free_port
from shared.broker import FailoverConnection, node_urls
from shared.startup import DependencyUnavailable


def test_the_hook_is_what_aio_pikas_reconnection_loop_calls() -> None:
    assert hasattr(RobustConnection, "_RobustConnection__connect_transport")


async def test_each_attempt_goes_to_the_next_node_round_the_list() -> None:
    ports = [free_port(), free_port()]  # bound and released: nothing answers there
    urls = [f"amqp://guest:guest@127.0.0.1:{port}/" for port in ports]
    connection = FailoverConnection(urls)
    tried = []
    for _ in range(3):
        with pytest.raises((OSError, asyncio.TimeoutError)):
            await connection._RobustConnection__connect_transport()
        tried.append(connection.url.port)
    assert tried == [ports[0], ports[1], ports[0]]
    await connection.close()


def test_node_urls_split_a_comma_separated_list() -> None:
    assert node_urls(" amqp://a:1/ , amqps://b/ ") == ["amqp://a:1/", "amqps://b/"]
    with pytest.raises(DependencyUnavailable, match="RABBITMQ_URL"):
        node_urls("amqp://a:1/,localhost:5672")
