"""Session-wide infrastructure and the default stack: one responder and two API instances.

Everything is started once per session as OS processes and stopped at the end, even when a
test fails; tests stay independent by using fresh conversation ids.
"""

from collections.abc import AsyncIterator, Generator, Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import AsyncMongoClient

from devstack.stack import start_mock_model
from shared.store.database import Database, Document
from tests.helpers import ApiClient, MockClient
from tests.infra import Broker, Deployment, deployment, mongodb_server, rabbitmq, service_env
from tests.tokens import AUTH_ENV

MOCK_TOKENS = 8
MOCK_DELAY_MS = 2
LAGGING_FLUSH_SECONDS = "5"
MODEL_TIMEOUT_SECONDS = "3"
LOG_TAIL_LINES = 15


_log_dirs: list[Path] = []


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("service-logs")
    _log_dirs.append(path)
    return path


@pytest.fixture(scope="session")
def mongodb_url(log_dir: Path) -> Iterator[str]:
    with mongodb_server(log_dir) as url:
        yield url


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    with rabbitmq() as running:
        yield running


@pytest.fixture(scope="session")
def model_url(log_dir: Path) -> Iterator[str]:
    """The project's mock model; short, fast replies unless a prompt's directive says otherwise."""
    process, url = start_mock_model(log_dir, tokens=MOCK_TOKENS, delay_ms=MOCK_DELAY_MS)
    try:
        yield url
    finally:
        process.stop()


@pytest.fixture(scope="session")
def stack(log_dir: Path, mongodb_url: str, broker: Broker, model_url: str) -> Iterator[Deployment]:
    env = service_env(mongodb_url, broker, model_url)
    env["OPENAI_TIMEOUT_SECONDS"] = MODEL_TIMEOUT_SECONDS  # a silent model fails a reply fast
    with deployment("main", log_dir, env, broker, responders=1, apis=2) as running:
        yield running


@pytest.fixture(scope="session")
def lagging_stack(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[Deployment]:
    """A second stack, in its own vhost and database, whose responder writes progress to
    MongoDB only every 5 s, so MongoDB lags far behind the stream. Only one test uses it, so
    no other reply moves its write schedule.
    """
    with rabbitmq("chat-test-lagging") as own_broker:
        env = service_env(mongodb_url, own_broker, model_url)
        with deployment(
            "lagging", log_dir, env, own_broker, apis=1, STORE_FLUSH_SECONDS=LAGGING_FLUSH_SECONDS
        ) as running:
            yield running


@pytest.fixture(scope="session")
async def lagging_api(lagging_stack: Deployment) -> AsyncIterator[ApiClient]:
    async for client in _api_client(lagging_stack.api_urls[0]):
        yield client


async def _api_client(url: str) -> AsyncIterator[ApiClient]:
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as http:
        yield ApiClient(http)


@pytest.fixture(scope="session")
async def api(stack: Deployment) -> AsyncIterator[ApiClient]:
    """API instance A of the default stack."""
    async for client in _api_client(stack.api_urls[0]):
        yield client


@pytest.fixture(scope="session")
async def api_b(stack: Deployment) -> AsyncIterator[ApiClient]:
    """API instance B of the default stack: same broker and database, another process."""
    async for client in _api_client(stack.api_urls[1]):
        yield client


@pytest.fixture(scope="session")
async def mock(model_url: str) -> AsyncIterator[MockClient]:
    async with httpx.AsyncClient(base_url=model_url.removesuffix("/v1"), timeout=10.0) as http:
        yield MockClient(http)


@pytest.fixture(scope="session")
async def database(stack: Deployment) -> AsyncIterator[Database]:
    """Direct read access to the stack's database, to prove that nothing was stored."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        stack.mongodb_url, serverSelectionTimeoutMS=10_000
    )
    try:
        yield client[stack.mongodb_db]
    finally:
        await client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, show the tail of every service log: the processes' side of the story."""
    report = yield
    if report.failed:
        for directory in _log_dirs:
            for path in sorted(directory.rglob("*.log")):
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                report.sections.append((f"log {path.name}", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def auth_stack(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[Deployment]:
    """A stack with users: HS256 tokens (`tests.tokens.user_token`), `iss` and `aud` checked,
    small limits, two API instances, in its own vhost and database.
    """
    with rabbitmq("chat-test-auth") as own_broker:
        env = {**service_env(mongodb_url, own_broker, model_url), **AUTH_ENV}
        with deployment("auth", log_dir, env, own_broker, responders=1, apis=2) as running:
            yield running


@pytest.fixture(scope="session")
async def auth_database(auth_stack: Deployment) -> AsyncIterator[Database]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(auth_stack.mongodb_url, tz_aware=True)
    try:
        yield client[auth_stack.mongodb_db]
    finally:
        await client.close()
