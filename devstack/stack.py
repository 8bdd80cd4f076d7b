"""Start the whole system locally: MongoDB (or SecantusDB), the mock model, API and responder."""

import asyncio
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.exceptions import AMQPError
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from devstack.processes import (
    Process,
    child_env,
    free_port,
    http_ok,
    port_open,
    python_module,
)
from shared.broker import CHAT_QUEUE, node_urls
from shared.settings import Settings

SECANTUS = "secantusd-py"
NO_USER_LIMITS = {
    "RATE_LIMIT_PER_MINUTE": "0",
    "MAX_ACTIVE_REPLIES": "0",
    "MAX_WEBSOCKETS": "0",
    "MAX_BODY_BYTES": str(16 * 1024 * 1024),
}
"""For load tests and tests of other things: one open-mode user doing the work of many."""


def mongo_reachable(url: str, timeout: float = 1.0) -> bool:
    client: MongoClient[dict[str, Any]] = MongoClient(
        url, serverSelectionTimeoutMS=int(timeout * 1000)
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def chat_consumers(amqp_url: str) -> int:
    """How many consumers the broker counts on the job queue (0 before it is declared)."""

    async def count(url: str) -> int:
        connection = await aio_pika.connect(url, timeout=2)
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(CHAT_QUEUE, passive=True)
            except AMQPError:
                return 0
            return queue.declaration_result.consumer_count or 0

    def run() -> int:
        for url in node_urls(amqp_url):  # any live node of a cluster knows its queues
            try:
                return asyncio.run(count(url))
            except (OSError, TimeoutError, AMQPError):
                continue
        return 0

    with ThreadPoolExecutor(1) as thread:  # callers may be inside an event loop of their own
        return thread.submit(run).result()


def start_secantus(
    log_dir: Path, storage: str = ":memory:", port: int | None = None
) -> tuple[Process, str]:
    """An embedded MongoDB-wire server as its own process; returns it and its URL."""
    port = port or free_port()
    executable = shutil.which(SECANTUS) or str(Path(sys.executable).parent / SECANTUS)
    process = Process(
        "secantus",
        [executable, "--host", "127.0.0.1", "--port", str(port), "--storage-path", storage],
        child_env(),
        log_dir,
    ).start()
    process.wait_ready(lambda: port_open("127.0.0.1", port))
    # SecantusDB serves each connection on a Python thread of its own: a small pool keeps
    # them from queueing for its interpreter lock (measured by the benchmark).
    return process, f"mongodb://127.0.0.1:{port}/?directConnection=true&maxPoolSize=8"


def start_mock_model(
    log_dir: Path, tokens: int = 40, delay_ms: float = 20, name: str = "mock-model"
) -> tuple[Process, str]:
    port = free_port()
    process = Process(
        name,
        python_module(
            "mock_openai", "--port", str(port), "--tokens", str(tokens), "--delay-ms", str(delay_ms)
        ),
        child_env(),
        log_dir,
    ).start()
    process.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"))
    return process, f"http://127.0.0.1:{port}/v1"


@dataclass
class Stack:
    """Environment for the services, and the processes this stack started."""

    env: dict[str, str]
    log_dir: Path
    processes: list[Process] = field(default_factory=list)
    responders: list[Process] = field(default_factory=list)

    def start_api(
        self, port: int | None = None, name: str | None = None, **overrides: str
    ) -> tuple[Process, str]:
        port = port or free_port()
        name = name or f"api-{port}"
        env = child_env(**{**self.env, "API_HOST": "127.0.0.1", "API_PORT": str(port), **overrides})
        process = Process(name, python_module("services.api"), env, self.log_dir).start()
        self.processes.append(process)
        url = f"http://127.0.0.1:{port}"
        process.wait_ready(lambda: http_ok(f"{url}/readyz"))
        return process, url

    def start_responder(self, name: str | None = None, **overrides: str) -> Process:
        name = name or f"responder-{len(self.processes)}"
        # Responders on one machine each need their own metrics port.
        env = child_env(**{"METRICS_PORT": str(free_port()), **self.env, **overrides})
        process = Process(name, python_module("services.responder"), env, self.log_dir).start()
        self.processes.append(process)
        self.responders.append(process)
        amqp_url = env.get("RABBITMQ_URL") or Settings().rabbitmq_url
        running = sum(responder.running() for responder in self.responders)
        process.wait_ready(lambda: chat_consumers(amqp_url) >= running)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def with_vhost(url: str, vhost: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{vhost}"))


class Vhost:
    """A throwaway RabbitMQ virtual host, so a run never sees another run's messages."""

    def __init__(self, prefix: str = "chat-test") -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"

    @staticmethod
    def available() -> bool:
        return shutil.which("rabbitmqctl") is not None

    def create(self, user: str = "guest") -> None:
        subprocess.run(
            ["rabbitmqctl", "-q", "add_vhost", self.name], check=True, capture_output=True
        )
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.name, user, ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )

    def delete(self) -> None:
        subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", self.name], check=False, capture_output=True
        )
