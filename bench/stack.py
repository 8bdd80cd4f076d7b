"""The system under test: the bench's own local stack (devstack's processes), or a running one."""

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench.probes import find_rabbitmq_pid, listening_pid
from devstack.stack import (
    NO_USER_LIMITS,
    Stack,
    Vhost,
    start_mock_model,
    start_secantus,
    with_vhost,
)

DATABASE = "bench"
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(slots=True)
class Target:
    api_url: str
    mock_url: str
    """The mock's root (no `/v1`), where `/_mock/emissions` is."""
    rabbitmq_url: str | None = None
    """The vhost the services use, for the AMQP tap; None: AMQP is not counted."""
    mongodb_url: str | None = None
    mongodb_db: str = "chat"
    pids: dict[str, int] = field(default_factory=dict)
    owned: bool = False
    """Started by the bench: its mock's journal may be reset between runs."""


@contextlib.contextmanager
def local_stack(
    log_dir: Path, rabbitmq_url: str | None = None, service_env: dict[str, str] | None = None
) -> Iterator[Target]:
    """SecantusDB, the mock model, one responder and one API, in a throwaway vhost.

    `service_env` is added to both services' environment, to try settings without code changes.
    """
    rabbitmq_url = rabbitmq_url or os.environ.get("RABBITMQ_URL", DEFAULT_RABBITMQ_URL)
    vhost = Vhost(prefix="bench")
    vhost.create(user=urlsplit(rabbitmq_url).username or "guest")
    stack = Stack(env={}, log_dir=log_dir)
    try:
        secantus, mongodb_url = start_secantus(log_dir)
        stack.processes.append(secantus)
        mock, model_url = start_mock_model(log_dir, name="mock")
        stack.processes.append(mock)
        amqp_url = with_vhost(rabbitmq_url, vhost.name)
        stack.env.update(
            MONGODB_URL=mongodb_url,
            MONGODB_DB=DATABASE,
            RABBITMQ_URL=amqp_url,
            OPENAI_BASE_URL=model_url,
            OPENAI_API_KEY="unused",
            OPENAI_MODEL="mock-model",
            **NO_USER_LIMITS,
        )
        stack.env.update(service_env or {})
        responder = stack.start_responder(name="responder")
        api, api_url = stack.start_api(name="api")
        pids = {
            "api": api.pid,
            "responder": responder.pid,
            "mock": mock.pid,
            "secantus": secantus.pid,
        }
        yield Target(
            api_url=api_url,
            mock_url=model_url.removesuffix("/v1"),
            rabbitmq_url=amqp_url,
            mongodb_url=mongodb_url,
            mongodb_db=DATABASE,
            pids=_with_shared(pids),
            owned=True,
        )
    finally:
        stack.stop()
        _delete(vhost)


def _delete(vhost: Vhost, timeout: float = 60.0) -> None:
    """Delete the run's vhost, waiting for the broker if someone has it stopped right now."""
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(
            ["rabbitmqctl", "-q", "delete_vhost", vhost.name], capture_output=True, text=True
        )
        if done.returncode == 0 or "does not exist" in done.stdout + done.stderr:
            return
        if time.monotonic() > deadline:
            sys.stderr.write(f"could not delete RabbitMQ vhost {vhost.name}: {done.stderr}\n")
            return
        time.sleep(2.0)


def running_stack(
    api_url: str,
    mock_url: str,
    rabbitmq_url: str | None,
    mongodb_url: str | None,
    mongodb_db: str,
    pids: dict[str, int],
) -> Target:
    """A stack started elsewhere; the API's and mock's pids are found by their ports."""
    found = dict(pids)
    for name, url in (("api", api_url), ("mock", mock_url)):
        port = urlsplit(url).port
        if name not in found and port is not None and (pid := listening_pid(port)) is not None:
            found[name] = pid
    return Target(
        api_url=api_url.rstrip("/"),
        mock_url=mock_url.rstrip("/").removesuffix("/v1"),
        rabbitmq_url=rabbitmq_url,
        mongodb_url=mongodb_url,
        mongodb_db=mongodb_db,
        pids=_with_shared(found),
    )


def _with_shared(pids: dict[str, int]) -> dict[str, int]:
    """Add the broker and the bench itself, which share the machine with the services."""
    pids = dict(pids)
    rabbitmq = find_rabbitmq_pid()
    if rabbitmq is not None and "rabbitmq" not in pids:
        pids["rabbitmq"] = rabbitmq
    pids.setdefault("bench", os.getpid())
    return pids
