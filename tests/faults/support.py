"""What the fault tests add to tests/helpers.py and tests/clients.py.

- `FaultStack`: a private stack per test module (SecantusDB on a storage directory, the mock
  model, its own RabbitMQ vhost, API and responder processes), started with devstack, so killing
  things never disturbs another module's processes.
- `rabbit`: stop and start the broker application, and make sure it runs again.
- `LiveSubscriber`: the `Rebuilder` of tests/clients.py fed by a background reader, so a
  subscriber keeps reading through a long fault instead of backing the server up.
- `Tally` and `audit`: the per-fault counts of lost, stuck and duplicated replies that the
  suite writes to a JSON file for the report.
"""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self, cast

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from devstack.processes import Process, free_port, port_open, wait_for
from devstack.stack import Stack, start_mock_model, start_secantus
from shared.schemas import FINISHED, UNFINISHED, ChatAccepted, Message, Status
from tests.clients import Rebuilder
from tests.helpers import ApiClient, MockClient, eventually, expected_reply, new_conversation_id
from tests.infra import Broker, rabbitmq, service_env

RESULTS_PATH = Path(os.environ.get("FAULT_RESULTS", "/tmp/fault-results.json"))
RABBIT_TIMEOUT = 120.0
SUBSCRIBER_LAG = 10.0
"""How long after GET shows a reply finished its subscribers may still be waiting for it."""

StackFactory = Callable[..., contextlib.AbstractContextManager["FaultStack"]]
"""The `make_stack` fixture of conftest.py: `make_stack(name, **options)` starts a FaultStack."""


# --- the broker ------------------------------------------------------------------------------


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


@contextlib.contextmanager
def broker_down() -> Iterator[None]:
    """The broker application stopped for the block, and always started again afterwards."""
    rabbit_stop_app()
    try:
        yield
    finally:
        rabbit_start_app()


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


# --- the stack -------------------------------------------------------------------------------


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


# --- clients ---------------------------------------------------------------------------------


class MockProbe(MockClient):
    """The mock's journal, including when each token left (for the stop tests)."""

    async def emissions(self, contains: str) -> list[dict[str, Any]]:
        response = await self.http.get("/_mock/emissions", params={"contains": contains})
        assert response.status_code == 200, response.text
        records: list[dict[str, Any]] = response.json()
        return records

    async def models_asked(self, contains: str) -> list[str]:
        """The model name of each request for `contains`: which responder asked, in order."""
        return [record["model"] for record in await self.requests(contains)]


@contextlib.asynccontextmanager
async def clients(stack: FaultStack) -> AsyncIterator[tuple[list[ApiClient], MockProbe]]:
    async with contextlib.AsyncExitStack() as exits:
        apis = []
        for url in stack.api_urls:
            http = await exits.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30.0))
            apis.append(ApiClient(http))
        mock_http = await exits.enter_async_context(
            httpx.AsyncClient(base_url=stack.mock_url, timeout=10.0)
        )
        yield apis, MockProbe(mock_http)


@contextlib.asynccontextmanager
async def new_conversation(stack: FaultStack) -> AsyncIterator[tuple[ApiClient, MockProbe, str]]:
    """The first API's client, the mock's, and a fresh conversation id: one test's setting."""
    async with clients(stack) as (apis, mock):
        yield apis[0], mock, new_conversation_id()


class LiveSubscriber(Rebuilder):
    """A WebSocket subscriber whose frames are read and checked by a background task.

    tests/clients.Subscriber reads only while a test waits on it; during a fault a test waits
    on other things (the broker, a process), so here a task keeps reading, as a browser would.
    A contract violation found by the Rebuilder is kept and raised by `check`.
    """

    def __init__(self, websocket: ClientConnection, conversation_id: str) -> None:
        super().__init__(conversation_id)
        self.websocket = websocket
        self.error: BaseException | None = None
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, ws_url: str, conversation_id: str, timeout: float = 20.0
    ) -> AsyncIterator[Self]:
        url = f"{ws_url}/conversations/{conversation_id}/stream"
        async with connect(url, max_size=None, open_timeout=timeout) as websocket:
            subscriber = cls(websocket, conversation_id)
            subscriber._task = asyncio.create_task(subscriber._pump())
            try:
                await subscriber.wait(lambda s: s.snapshot is not None, timeout, "the snapshot")
                yield subscriber
            finally:
                subscriber._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await subscriber._task

    async def _pump(self) -> None:
        """Read until the server closes; after a contract violation, read without applying."""
        try:
            async for raw in self.websocket:
                self.frames += 1
                if self.error is None:
                    try:
                        self.apply(orjson.loads(raw))
                    except Exception as error:  # a contract violation, or a bad frame
                        self.error = error
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.websocket.close_code
            self.closed_at = time.monotonic()

    @property
    def connected(self) -> bool:
        return self.closed_at is None

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(
                f"subscriber of {self.conversation_id}: {self.error}"
            ) from self.error

    async def wait(
        self, condition: Callable[[Self], bool], timeout: float = 20.0, what: str = "condition"
    ) -> Self:
        def ready() -> bool:
            self.check()
            if condition(self):
                return True
            assert self.connected, (
                f"subscriber of {self.conversation_id} was disconnected "
                f"(code {self.close_code}) while waiting for {what}"
            )
            return False

        await eventually(ready, timeout, interval=0.02, what=f"subscriber: {what}")
        return self

    async def finished(self, message_id: str, timeout: float = 30.0) -> Message:
        await self.wait(lambda s: s.is_finished(message_id), timeout, f"{message_id} to finish")
        return self.messages[message_id]

    async def streaming(self, message_id: str, seq: int = 3, timeout: float = 20.0) -> Message:
        """Wait until the reply is mid-stream: at least `seq` deltas of an unfinished attempt."""

        def mid_stream(s: Self) -> bool:
            message = s.get(message_id)
            assert message is None or message.status not in FINISHED, (
                f"{message_id} finished before the fault could be injected: {message}"
            )
            return message is not None and message.seq >= seq

        await self.wait(mid_stream, timeout, f"{message_id} to stream {seq} deltas")
        return self.messages[message_id]

    def attempt(self, message_id: str) -> int:
        message = self.get(message_id)
        return 0 if message is None else message.attempt

    def restarts(self, message_id: str) -> list[dict[str, Any]]:
        """`message.updated` frames that restarted the reply from seq 0 (a new attempt)."""
        return [
            event
            for event in self.events_of(message_id)
            if event["type"] == "message.updated" and event["message"]["seq"] == 0
        ]

    def events_after_final(self, message_id: str) -> list[dict[str, Any]]:
        events = self.events_of(message_id)
        finals = [
            index
            for index, event in enumerate(events)
            if event["type"] in ("message.completed", "message.failed")
        ]
        return events[finals[0] + 1 :] if finals else []


@contextlib.asynccontextmanager
async def watched_post(
    api: ApiClient, conversation_id: str, text: str
) -> AsyncIterator[tuple[LiveSubscriber, ChatAccepted]]:
    """Subscribe to the conversation (snapshot received), then POST `text` to it."""
    async with LiveSubscriber.open(api.ws_url, conversation_id) as subscriber:
        yield subscriber, await api.post_chat(text, conversation_id)


async def until(
    check: Callable[[], Awaitable[object]], timeout: float, what: str, interval: float = 0.2
) -> None:
    """`eventually` for an async check (its signature does not type-check for coroutines)."""
    await eventually(cast(Callable[[], Any], check), timeout, interval, what)


async def readiness(api: ApiClient) -> int:
    """/readyz's status code, 0 if the API does not answer."""
    try:
        return (await api.http.get("/readyz", timeout=10.0)).status_code
    except httpx.HTTPError:
        return 0


async def readiness_is(apis: list[ApiClient], status: int, timeout: float) -> None:
    """Wait until every API's /readyz answers `status`."""
    for api in apis:

        async def answers(api: ApiClient = api) -> bool:
            return await readiness(api) == status

        await until(answers, timeout, f"/readyz of {api.base_url} to say {status}")


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


async def settle(
    api: ApiClient,
    conversation_id: str,
    reply_id: str,
    subscribers: list[LiveSubscriber] = (),  # type: ignore[assignment]
    timeout: float = 30.0,
) -> list[str]:
    """Wait, with one deadline, for the stored reply and then every subscriber to finish.

    Returns what did not happen instead of raising, so the audit still counts the rest.
    Subscribers get SUBSCRIBER_LAG seconds after GET shows the reply finished.
    """
    problems = []
    try:
        await api.finished(conversation_id, reply_id, timeout)
    except AssertionError:
        stored = await api.message(conversation_id, reply_id)
        problems.append(f"reply {reply_id} still {stored.status} after {timeout:.0f}s")
    deadline = time.monotonic() + SUBSCRIBER_LAG
    for subscriber in subscribers:
        try:
            await subscriber.finished(reply_id, max(deadline - time.monotonic(), 0.5))
        except AssertionError as error:
            stored = await api.message(conversation_id, reply_id)
            problems.append(
                f"{error}; the subscriber has {subscriber.get(reply_id)!r}; GET has {stored!r}; "
                f"its last events: {subscriber.timeline()[-6:]}"
            )
    return problems


# --- counting ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one fault did to the replies: the numbers of the report's table."""

    fault: str
    trials: int = 0
    replies: int = 0
    lost: int = 0
    stuck: int = 0
    duplicates: int = 0
    mixed: int = 0
    subscriber_mismatches: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class ResultBook:
    """Collects tallies and rewrites the JSON file after each, so a crash keeps the counts."""

    def __init__(self, path: Path = RESULTS_PATH) -> None:
        self.path = path
        self.tallies: list[Tally] = []
        self.started = time.monotonic()

    def new(self, fault: str) -> Tally:
        tally = Tally(fault)
        self.tallies.append(tally)
        return tally

    def save(self) -> None:
        data = {
            "suite_seconds": round(time.monotonic() - self.started, 1),
            "faults": [asdict(tally) for tally in self.tallies],
        }
        self.path.write_text(json.dumps(data, indent=2))


@dataclass
class Expect:
    """What one reply may end as: statuses allowed, and the texts allowed (None: any).

    A failed reply may hold a prefix of an allowed text (the text received so far).
    """

    reply_id: str
    statuses: tuple[Status, ...] = (Status.COMPLETED,)
    texts: tuple[str, ...] | None = None
    model_calls: int | None = None
    prompt: str | None = None


def _text_allowed(reply: Message, texts: tuple[str, ...]) -> bool:
    """A completed reply is one attempt's whole text; a failed one keeps a prefix of it."""
    if reply.status == Status.FAILED:
        return any(text.startswith(reply.message) for text in texts)
    return reply.message in texts


async def audit(
    api: ApiClient,
    conversation_id: str,
    expects: list[Expect],
    tally: Tally,
    subscribers: list[LiveSubscriber] = (),  # type: ignore[assignment]
    mock: MockProbe | None = None,
) -> list[str]:
    """Count what a user would check, add it to `tally`, and return the problems found.

    One final reply per user message (no duplicate), none left created/streaming (stuck),
    none missing or ending otherwise than allowed (lost), the final text one attempt's text
    exactly (not a mix), every subscriber's rebuilt text equal to the stored one, and its end
    announced to every subscriber once, by its final event (`end_announcement_problem`).
    """
    problems: list[str] = []
    stored = (await api.conversation(conversation_id)).messages
    users = [message for message in stored if message.sender == "user"]
    replies = {message.id: message for message in stored if message.sender == "assistant"}
    tally.replies += len(expects)
    if len(replies) != len(users):
        extra = max(0, len(replies) - len(users))
        tally.duplicates += extra
        problems.append(f"{len(users)} user messages but {len(replies)} replies")
    for expect in expects:
        reply = replies.get(expect.reply_id)
        if reply is None:
            tally.lost += 1
            problems.append(f"reply {expect.reply_id} is not stored")
            continue
        if reply.status in UNFINISHED:
            tally.stuck += 1
            problems.append(f"reply {reply.id} stuck {reply.status}: {reply!r}")
            continue
        if reply.status not in expect.statuses:
            tally.lost += 1
            problems.append(f"reply {reply.id} ended {reply.status} ({reply.error})")
        if reply.status == Status.FAILED and not reply.error:
            problems.append(f"reply {reply.id} failed without an error")
        if expect.texts is not None and not _text_allowed(reply, expect.texts):
            tally.mixed += 1
            problems.append(
                f"reply {reply.id} ({reply.status}) text is not one attempt's text"
                f"{' (or a prefix of it)' if reply.status == Status.FAILED else ''}: "
                f"{reply.message!r} (attempt {reply.attempt})"
            )
        if mock is not None and expect.prompt is not None and expect.model_calls is not None:
            calls = len(await mock.requests(expect.prompt))
            if calls > expect.model_calls:
                tally.duplicates += calls - expect.model_calls
            if calls != expect.model_calls:
                problems.append(
                    f"the model was asked {calls} times for {reply.id}, "
                    f"expected {expect.model_calls}"
                )
        for subscriber in subscribers:
            if subscriber.conversation_id != conversation_id:
                continue
            seen = subscriber.get(reply.id)
            if subscriber.error is not None:
                tally.subscriber_mismatches += 1
                problems.append(f"subscriber broke the contract: {subscriber.error}")
            elif seen is None or seen.status != reply.status or seen.message != reply.message:
                tally.subscriber_mismatches += 1
                problems.append(f"subscriber rebuilt {seen!r} but GET has {reply!r} for {reply.id}")
            elif ending := end_announcement_problem(subscriber, reply):
                tally.subscriber_mismatches += 1
                problems.append(ending)
    return problems


def end_announcement_problem(subscriber: LiveSubscriber, reply: Message) -> str | None:
    """What is wrong with how the subscriber learnt that `reply` finished, if anything.

    A client ends its "typing" indicator on `message.completed` / `message.failed`: a reply
    that finished after the snapshot is announced by exactly one of them, and nothing about the
    reply comes after it. A reply already finished in the snapshot gets no event at all.
    """
    if reply.status in UNFINISHED:
        return None
    events = subscriber.events_of(reply.id)
    kinds = [event["type"] for event in events]
    finals = [kind for kind in kinds if kind in ("message.completed", "message.failed")]
    in_snapshot = next((m for m in subscriber.snapshot or [] if m.id == reply.id), None)
    if in_snapshot is not None and in_snapshot.status in FINISHED:
        if events:
            return f"{reply.id} was finished in the snapshot, then came {kinds}"
        return None
    if len(finals) != 1 or kinds[-1] != finals[0]:
        return (
            f"{reply.id} ended {reply.status} but its subscriber of {subscriber.conversation_id} "
            f"got {len(finals)} final events, and its last events were {kinds[-4:]}"
        )
    return None


def whole_reply(
    reply_id: str, text: str, tokens: int, attempt: int = 0, model_calls: int = 1
) -> Expect:
    """The reply completed with one attempt's whole text, the model asked `model_calls` times."""
    return Expect(
        reply_id,
        texts=(expected_reply(text, tokens, attempt),),
        model_calls=model_calls,
        prompt=text,
    )


async def settle_and_audit(
    api: ApiClient,
    conversation_id: str,
    expect: Expect,
    tally: Tally,
    subscribers: list[LiveSubscriber] = (),  # type: ignore[assignment]
    mock: MockProbe | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """One trial: `settle` the reply, count the trial, then `audit` it; all problems found."""
    problems = await settle(api, conversation_id, expect.reply_id, subscribers, timeout)
    tally.trials += 1
    problems += await audit(api, conversation_id, [expect], tally, subscribers, mock)
    return problems


def save_tally(results: ResultBook, tally: Tally, seconds: float) -> None:
    """Record how long the fault took (to 0.1 s) and rewrite the results file."""
    tally.seconds = round(seconds, 1)
    results.save()
