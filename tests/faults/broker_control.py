"""Stopping and starting the shared RabbitMQ, and reading its queue depths, with rabbitmqctl.

Every way out of a fault test leaves the broker running: `broker_down` restarts it in `finally`
and the suite's safety net (conftest.py) calls `ensure_rabbit_running` once more.
"""

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator

from devstack.processes import port_open, wait_for

RABBIT_TIMEOUT = 120.0


def _rabbitmqctl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def rabbit_running() -> bool:
    """The node is up and its application is running (not just the Erlang VM)."""
    try:
        result = subprocess.run(
            ["rabbitmq-diagnostics", "-q", "check_running"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and port_open("127.0.0.1", 5672)


def rabbit_stop_app() -> None:
    """Stop the broker application: every client connection drops, durable data stays."""
    result = _rabbitmqctl("stop_app")
    assert result.returncode == 0, f"rabbitmqctl stop_app failed: {result.stderr}"
    wait_for(lambda: not port_open("127.0.0.1", 5672), 30, "the AMQP port to close")


def rabbit_start_app(timeout: float = RABBIT_TIMEOUT) -> None:
    """Start the broker application again and wait, with a deadline, until it serves AMQP."""
    _rabbitmqctl("start_app", timeout=timeout)
    _rabbitmqctl("await_startup", timeout=timeout)
    wait_for(rabbit_running, timeout, "RabbitMQ to run again", interval=0.5)


def ensure_rabbit_running(timeout: float = RABBIT_TIMEOUT) -> None:
    """Whatever a test did to the broker, leave it running: start the app, or the whole node."""
    if rabbit_running():
        return
    if _rabbitmqctl("status", timeout=30).returncode == 0:
        _rabbitmqctl("start_app", timeout=timeout)
    else:
        subprocess.run(["rabbitmq-server", "-detached"], check=False, timeout=60)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _rabbitmqctl("await_startup", timeout=timeout).returncode == 0 and rabbit_running():
            return
        time.sleep(1)
    raise RuntimeError("RabbitMQ did not come back; start it by hand: rabbitmq-server -detached")


@contextlib.asynccontextmanager
async def broker_down() -> AsyncIterator[None]:
    """The broker application stopped for the block, and always started again afterwards.

    rabbitmqctl blocks for seconds, so it runs off the event loop: subscribers keep reading.
    """
    await asyncio.to_thread(rabbit_stop_app)
    try:
        yield
    finally:
        await asyncio.to_thread(rabbit_start_app)


def queue_depths(vhost: str) -> dict[str, tuple[int, int]]:
    """(ready, unacknowledged) of every queue of the vhost."""
    result = _rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"
    )
    assert result.returncode == 0, result.stderr
    depths = {}
    for line in result.stdout.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[1].isdigit():
            depths[fields[0]] = (int(fields[1]), int(fields[2]))
    return depths
