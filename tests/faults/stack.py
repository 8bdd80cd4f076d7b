"""A private stack per fault module, so killing things never disturbs another module's processes.

SecantusDB on a storage directory (its data survives a restart), the mock model, a RabbitMQ
vhost of its own, and API and responder processes, all started with devstack.
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devstack.processes import Process, free_port
from devstack.stack import Stack, start_mock_model, start_secantus
from tests.infra import Broker, rabbitmq, service_env

StackFactory = Callable[..., contextlib.AbstractContextManager["FaultStack"]]
"""The `make_stack` fixture of conftest.py: `make_stack(name, **options)` starts a FaultStack."""


@dataclass
class FaultStack:
    """One module's own processes; the responders are told apart by their model name.

    Each responder sends a distinct OPENAI_MODEL, which the mock records with every request,
    so a test can tell which responder is writing a reply (the mock ignores the name, and its
    attempt counter depends only on the messages, so a retry elsewhere is still attempt 1).
    """

    name: str
    log_dir: Path
    storage: Path
    broker: Broker
    stack: Stack
    settings: dict[str, str]
    mongo_port: int
    mongo: Process
    mock_url: str
    responders: dict[str, Process] = field(default_factory=dict)
    apis: list[tuple[Process, str]] = field(default_factory=list)
    _count: int = 0

    @property
    def vhost(self) -> str:
        assert self.broker.vhost is not None
        return self.broker.vhost

    @property
    def api_urls(self) -> list[str]:
        return [url for process, url in self.apis if process.running()]

    def _next(self, kind: str) -> str:
        self._count += 1
        return f"{self.name}-{kind}-{self._count}"

    def start_responder(self, **overrides: str) -> Process:
        name = self._next("responder")
        env = {**self.settings, "OPENAI_MODEL": f"model-{name}", **overrides}
        process = self.stack.start_responder(name=name, **env)
        self.responders[f"model-{name}"] = process
        return process

    def start_api(self, **overrides: str) -> tuple[Process, str]:
        env = {**self.settings, **overrides}
        process, url = self.stack.start_api(None, self._next("api"), **env)
        self.apis.append((process, url))
        return process, url

    def live_responders(self) -> list[Process]:
        return [process for process in self.responders.values() if process.running()]

    def responder_for(self, model: str) -> Process:
        return self.responders[model]

    def stop_mongo(self) -> int | None:
        return self.mongo.stop(timeout=30)

    def start_mongo(self) -> None:
        """SecantusDB again, on the same port and storage directory, so the data survives."""
        self.mongo, _ = start_secantus(self.log_dir, str(self.storage), port=self.mongo_port)
        self.stack.processes.append(self.mongo)

    @contextlib.asynccontextmanager
    async def mongo_down(self) -> AsyncIterator[None]:
        """MongoDB stopped for the block, and always started again afterwards."""
        assert await asyncio.to_thread(self.stop_mongo) is not None
        try:
            yield
        finally:
            await asyncio.to_thread(self.start_mongo)

    def close(self) -> None:
        for process in self.stack.processes:
            if process.running():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
        self.stack.stop()


@contextlib.contextmanager
def fault_stack(
    name: str,
    base_dir: Path,
    responders: int = 2,
    apis: int = 1,
    mock_tokens: int = 20,
    mock_delay_ms: float = 20,
    **settings: str,
) -> Iterator[FaultStack]:
    """Start a private stack; everything it started stops at the end, even on failure."""
    log_dir = base_dir / "logs"
    storage = base_dir / "mongo"
    storage.mkdir(parents=True, exist_ok=True)
    mongo_port = free_port()
    with rabbitmq(prefix=f"fault-{name}") as broker:
        assert broker.vhost is not None, "the fault tests need a local broker and rabbitmqctl"
        stack = Stack(env={}, log_dir=log_dir)
        faults: FaultStack | None = None
        try:
            mongo, mongodb_url = start_secantus(log_dir, str(storage), port=mongo_port)
            stack.processes.append(mongo)
            mock, model_url = start_mock_model(
                log_dir, tokens=mock_tokens, delay_ms=mock_delay_ms, name=f"{name}-mock"
            )
            stack.processes.append(mock)
            env = service_env(mongodb_url, broker, model_url)
            env.pop("OPENAI_MODEL")
            stack.env.update(env)
            faults = FaultStack(
                name=name,
                log_dir=log_dir,
                storage=storage,
                broker=broker,
                stack=stack,
                settings=dict(settings),
                mongo_port=mongo_port,
                mongo=mongo,
                mock_url=model_url.removesuffix("/v1"),
            )
            for _ in range(responders):
                faults.start_responder()
            for _ in range(apis):
                faults.start_api()
            yield faults
        finally:
            if faults is not None:
                faults.close()
            else:
                stack.stop()


def stack_fixture(name: str, doc: str, **options: object) -> Any:
    """The module-scoped `stack` fixture of a fault module: `make_stack(name, **options)`."""

    @pytest.fixture(scope="module")
    def stack(make_stack: StackFactory) -> Iterator[FaultStack]:
        with make_stack(name, **options) as running:
            yield running

    stack.__doc__ = doc
    return stack
