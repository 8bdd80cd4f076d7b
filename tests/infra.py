"""The real parts the integration tests run against, started with the project's devstack helpers.

MongoDB: MONGODB_URL when it is set and reachable, else SecantusDB as its own process, else a
MongoDB container when a Docker engine is there. RabbitMQ: RABBITMQ_URL, inside a throwaway
virtual host when rabbitmqctl can make one, so no run sees another run's messages.
"""

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from devstack.processes import Process, port_open
from devstack.stack import (
    NO_USER_LIMITS,
    SECANTUS,
    Stack,
    Vhost,
    mongo_reachable,
    start_secantus,
    with_vhost,
)

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"
MONGO_IMAGE = "mongo:7"
SYSTEM_PROMPT = "You are the assistant under test."
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
VHOST_DELETE_SECONDS = 120.0


class InfrastructureMissing(RuntimeError):
    """A dependency the integration tests need is not there; the message says which."""


def secantus_available() -> bool:
    return bool(shutil.which(SECANTUS)) or (Path(sys.executable).parent / SECANTUS).exists()


def docker_available() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def mongodb_server(log_dir: Path) -> Iterator[str]:
    """Yield the URL of a MongoDB-protocol server for this session; stop it afterwards."""
    url = os.environ.get("MONGODB_URL")
    if url and mongo_reachable(url, timeout=2.0):
        yield url
    elif secantus_available():
        process, url = start_secantus(log_dir, ":memory:")
        try:
            yield url
        finally:
            process.stop()
    elif docker_available():
        from testcontainers.mongodb import MongoDbContainer

        with MongoDbContainer(MONGO_IMAGE) as container:
            yield container.get_connection_url()
    else:
        raise InfrastructureMissing(
            "no MongoDB: set MONGODB_URL, install secantusdb (secantusd-py) or run a Docker engine"
        )


@dataclass
class Broker:
    url: str
    vhost: str | None


@contextlib.contextmanager
def rabbitmq(prefix: str = "chat-test") -> Iterator[Broker]:
    """RABBITMQ_URL, inside a fresh virtual host when the broker is local and rabbitmqctl works."""
    base = os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    parts = urlsplit(base)
    host, port = parts.hostname or "localhost", parts.port or 5672
    if not port_open(host, port):
        raise InfrastructureMissing(f"no RabbitMQ at RABBITMQ_URL={host}:{port}")
    if not (Vhost.available() and host in LOCAL_HOSTS):
        yield Broker(base, None)
        return
    vhost = Vhost(prefix)
    vhost.create(user=parts.username or "guest")
    try:
        yield Broker(with_vhost(base, vhost.name), vhost.name)
    finally:
        _delete(vhost)


def _delete(vhost: Vhost) -> None:
    """Delete the vhost, retrying while the broker is briefly away (another suite restarts it)."""
    deadline = time.monotonic() + VHOST_DELETE_SECONDS
    while True:
        vhost.delete()
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_vhosts", "name"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if listed.returncode == 0 and vhost.name not in listed.stdout.split():
            return
        if time.monotonic() > deadline:
            warnings.warn(f"could not delete RabbitMQ vhost {vhost.name}", stacklevel=1)
            return
        time.sleep(1.0)


@dataclass
class Deployment:
    """A running stack: its processes, where its APIs listen and what it is connected to."""

    stack: Stack
    broker: Broker
    mongodb_url: str
    mongodb_db: str
    api_urls: list[str] = field(default_factory=list)
    responders: list[Process] = field(default_factory=list)


def service_env(mongodb_url: str, broker: Broker, model_url: str) -> dict[str, str]:
    return {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DB": f"chat_test_{uuid.uuid4().hex[:8]}",
        "RABBITMQ_URL": broker.url,
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "sk-test-not-a-real-key",
        "OPENAI_MODEL": "mock-model",
        "SYSTEM_PROMPT": SYSTEM_PROMPT,
        **NO_USER_LIMITS,
    }


@contextlib.contextmanager
def deployment(
    name: str,
    log_dir: Path,
    env: dict[str, str],
    broker: Broker,
    responders: int = 1,
    apis: int = 2,
    **responder_env: str,
) -> Iterator[Deployment]:
    """Responders first (so no job waits), then the APIs; everything stops, even on failure."""
    stack = Stack(env=env, log_dir=log_dir)
    running = Deployment(stack, broker, env["MONGODB_URL"], env["MONGODB_DB"])
    try:
        for index in range(responders):
            running.responders.append(
                stack.start_responder(name=f"{name}-responder-{index}", **responder_env)
            )
        for index in range(apis):
            _, url = stack.start_api(name=f"{name}-api-{index}")
            running.api_urls.append(url)
        yield running
    finally:
        stack.stop()
