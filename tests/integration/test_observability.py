"""What an operator sees: Prometheus metrics and structured logs, from real processes.

A stack of its own (own vhost, own log files): API 0 and the responder log JSON at INFO, API 1
logs text at DEBUG, so both formats, the context on each line and the redaction are checked on
what the services really write.
"""

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
from aio_pika.exceptions import DeliveryError
from websockets.asyncio.client import connect

from devstack.processes import Process
from devstack.stack import Stack
from shared.broker import CHAT_QUEUE, publish_job
from shared.schemas import LOCAL_OWNER, ChatJob
from tests.clients import Subscriber
from tests.helpers import ApiClient, eventually, expected_reply, new_conversation_id, prompt
from tests.infra import rabbitmq, service_env
from tests.metrics import Samples, scrape, value

SECRET = "s3cret-token-value"
TOKENS = 8
MAX_BODY_BYTES = 64 * 1024  # the JSON API's own limit, so a refusal can be provoked
QUEUE_LIMIT = 1
WAITING = 130
"""More replies than the outbox relay publishes on one pass (100)."""


@dataclass
class Observed:
    json_api: str
    text_api: str
    json_log: Path
    text_log: Path
    responder: Process

    @property
    def responder_metrics(self) -> str:
        return f"http://127.0.0.1:{self.responder.env['METRICS_PORT']}/metrics"


@pytest.fixture(scope="module")
def observed(mongodb_url: str, model_url: str, log_dir: Path) -> Iterator[Observed]:
    with rabbitmq("chat-test-observed") as broker:
        env = service_env(mongodb_url, broker, model_url)
        stack = Stack(env={**env, "LOG_FORMAT": "json"}, log_dir=log_dir / "observed")
        try:
            responder = stack.start_responder(name="observed-responder")
            json_api, json_url = stack.start_api(
                name="observed-json-api", MAX_BODY_BYTES=str(MAX_BODY_BYTES)
            )
            text_api, text_url = stack.start_api(
                name="observed-text-api", LOG_FORMAT="text", LOG_LEVEL="DEBUG"
            )
            yield Observed(json_url, text_url, json_api.log_path, text_api.log_path, responder)
        finally:
            stack.stop()


@pytest.fixture
async def json_api(observed: Observed) -> AsyncIterator[ApiClient]:
    async with httpx.AsyncClient(base_url=observed.json_api, timeout=10.0) as http:
        yield ApiClient(http)


@pytest.fixture
async def text_api(observed: Observed) -> AsyncIterator[ApiClient]:
    async with httpx.AsyncClient(base_url=observed.text_api, timeout=10.0) as http:
        yield ApiClient(http)


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_text().splitlines()]


async def test_api_metrics_count_requests_by_route_sockets_and_relay(
    observed: Observed, json_api: ApiClient
) -> None:
    metrics = f"{observed.json_api}/metrics"
    before = await scrape(metrics)
    conversation_id = new_conversation_id()
    async with Subscriber.open(json_api.ws_url, conversation_id) as subscriber:
        during = await scrape(metrics)
        accepted = await json_api.post_chat(prompt("metrics", tokens=TOKENS), conversation_id)
        await subscriber.until_finished(accepted.message_id)
        await json_api.conversation(conversation_id)
    after = await eventually(
        lambda: _scraped_with_socket_closed(metrics), what="the socket gauge back to 0"
    )

    posted = {"method": "POST", "route": "/chat", "status": "202"}
    assert value(after, "chat_http_requests_total", **posted) == (
        value(before, "chat_http_requests_total", **posted) + 1
    )
    listed = {"method": "GET", "route": "/conversations/{conversation_id}/messages"}
    assert value(after, "chat_http_requests_total", **listed, status="200") >= 1
    assert value(after, "chat_http_request_duration_seconds_count", **listed) >= 1
    assert not any(conversation_id in str(key) for key in after), "no series per conversation"
    assert value(during, "chat_websockets_open") == value(before, "chat_websockets_open") + 1
    assert value(after, "chat_relay_batches_total") > value(before, "chat_relay_batches_total")
    assert value(after, "chat_relay_lag_seconds_count") > value(
        before, "chat_relay_lag_seconds_count"
    )
    assert value(after, "chat_outbox_replies") == 0
    assert ("chat_subscribers_dropped_total", ()) in after
    assert ("process_resident_memory_bytes", ()) in after


async def _scraped_with_socket_closed(url: str) -> Samples | None:
    samples = await scrape(url)
    return samples if value(samples, "chat_websockets_open") == 0 else None


async def test_json_logs_name_the_request_conversation_and_message(
    observed: Observed, json_api: ApiClient
) -> None:
    conversation_id = new_conversation_id()
    text = prompt("logged", tokens=TOKENS)
    response = await json_api.http.post(
        "/chat",
        json={"message": text, "conversationId": conversation_id},
        headers={"X-Request-ID": "req-logged-1"},
    )
    assert response.status_code == 202
    assert response.headers["x-request-id"] == "req-logged-1"
    reply_id = response.json()["messageId"]
    reply = await json_api.finished(conversation_id, reply_id)
    assert reply.message == expected_reply(text, TOKENS)

    def request_line() -> dict[str, object] | None:
        return next(
            (
                line
                for line in json_lines(observed.json_log)
                if line.get("requestId") == "req-logged-1"
            ),
            None,
        )

    line = await eventually(request_line, what="the request's log line")
    assert line["event"] == "request" and line["route"] == "/chat" and line["status"] == 202
    assert (line["conversationId"], line["messageId"]) == (conversation_id, reply_id)
    api_lines = json_lines(observed.json_log)  # every line is JSON, uvicorn's too
    assert any(line["event"] == "Application startup complete." for line in api_lines)
    responder_lines = json_lines(observed.responder.log_path)
    assert any(line["event"].startswith("consuming") for line in responder_lines)


async def test_websocket_chatter_is_debug_and_secrets_are_hidden(
    observed: Observed, json_api: ApiClient, text_api: ApiClient
) -> None:
    """At INFO a WebSocket writes no line; at DEBUG its handshake shows, token hidden."""
    conversation_id = new_conversation_id()
    for api in (json_api, text_api):
        url = f"{api.ws_url}/conversations/{conversation_id}/stream?access_token={SECRET}"
        async with connect(url) as websocket:
            assert orjson.loads(await websocket.recv())["type"] == "snapshot"
        response = await api.http.get(
            f"/conversations/{conversation_id}/messages",
            params={"access_token": SECRET},
            headers={"Authorization": f"Bearer {SECRET}"},
        )
        assert response.status_code in (200, 404)

    def handshake_logged() -> bool:
        return "[accepted]" in observed.text_log.read_text()

    await eventually(handshake_logged, what="the text API's debug line of the handshake")
    json_log, text_log = observed.json_log.read_text(), observed.text_log.read_text()
    assert SECRET not in json_log and SECRET not in text_log
    assert "access_token=***" in text_log
    assert "WebSocket" not in json_log and "connection open" not in json_log
    text_lines = text_log.splitlines()
    assert any("conversationId=" + conversation_id in line for line in text_lines)
    for line in text_lines:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(line)


async def test_responder_metrics_count_replies_tokens_and_latencies(
    observed: Observed, json_api: ApiClient
) -> None:
    before = await scrape(observed.responder_metrics)
    conversation_id = new_conversation_id()
    text = prompt("responder-metrics", tokens=TOKENS)
    accepted = await json_api.post_chat(text, conversation_id)
    reply = await json_api.finished(conversation_id, accepted.message_id)
    assert reply.message == expected_reply(text, TOKENS)

    async def counted() -> Samples | None:
        samples = await scrape(observed.responder_metrics)
        done = value(samples, "chat_replies_total", status="completed")
        return samples if done > value(before, "chat_replies_total", status="completed") else None

    after = await eventually(counted, what="the finished reply to be counted")

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("chat_replies_total", status="completed") == 1
    assert grew("chat_replies_total", status="failed") == 0
    assert grew("chat_tokens_streamed_total") == TOKENS
    assert grew("chat_time_to_first_token_seconds_count") == 1
    assert grew("chat_model_latency_seconds_count") == 1
    assert grew("chat_model_latency_seconds_sum") <= grew("chat_time_to_first_token_seconds_sum")
    assert value(after, "chat_reply_slots") > 0
    assert value(after, "chat_replies_in_progress") == 0
    responder_lines = json_lines(observed.responder.log_path)
    (finished,) = [line for line in responder_lines if line.get("messageId") == reply.id]
    assert finished["event"] == "reply finished" and finished["status"] == "completed"
    assert finished["conversationId"] == conversation_id


async def test_a_failing_model_is_counted_by_kind(observed: Observed, json_api: ApiClient) -> None:
    before = await scrape(observed.responder_metrics)
    conversation_id = new_conversation_id()
    accepted = await json_api.post_chat(prompt("model-error", status=400), conversation_id)
    reply = await json_api.finished(conversation_id, accepted.message_id)
    assert reply.status == "failed"

    async def counted() -> Samples | None:
        samples = await scrape(observed.responder_metrics)
        failed = value(samples, "chat_replies_total", status="failed")
        return samples if failed > value(before, "chat_replies_total", status="failed") else None

    after = await eventually(counted, what="the failed reply to be counted")
    errors = value(after, "chat_model_errors_total", kind="status")
    assert errors - value(before, "chat_model_errors_total", kind="status") == 1


async def test_a_refused_body_is_counted_by_its_limit(
    observed: Observed, json_api: ApiClient
) -> None:
    metrics = f"{observed.json_api}/metrics"
    before = await scrape(metrics)
    oversized = {"message": "x" * (MAX_BODY_BYTES + 1)}
    response = await json_api.http.post("/chat", json=oversized)
    assert response.status_code == 413
    after = await scrape(metrics)
    refused = value(after, "chat_limits_refused_total", limit="body")
    assert refused - value(before, "chat_limits_refused_total", limit="body") == 1


@dataclass
class FullQueue:
    """An API alone on a virtual host of its own, whose chat-message queue the test can fill."""

    api_url: str
    broker_url: str
    vhost: str


@pytest.fixture
def full_queue(mongodb_url: str, model_url: str, log_dir: Path) -> Iterator[FullQueue]:
    with rabbitmq("chat-test-outbox") as broker:
        if broker.vhost is None:
            pytest.skip("a queue limit needs a virtual host of its own")
        stack = Stack(env=service_env(mongodb_url, broker, model_url), log_dir=log_dir / "outbox")
        try:
            _, api_url = stack.start_api(name="outbox-api")
            yield FullQueue(api_url, broker.url, broker.vhost)
        finally:
            stack.stop()


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=30)


async def fill(broker_url: str) -> None:
    """Publish jobs for no reply until RabbitMQ refuses one: the queue is full."""
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        job = ChatJob(
            owner=LOCAL_OWNER, conversation_id="none", user_message_id="none", message_id="none"
        )
        with pytest.raises(DeliveryError):
            for _ in range(QUEUE_LIMIT + 2):  # a quorum queue may take one past its limit
                await publish_job(channel, job)


async def test_the_outbox_gauge_counts_every_waiting_reply(full_queue: FullQueue) -> None:
    """More replies wait than the relay publishes on one pass: the gauge says how many.

    RabbitMQ refuses their jobs (the queue is at its length limit), as it would a full queue
    in production; the gauge going back to 0 is the broker-outage fault test's.
    """
    vhost = full_queue.vhost
    metrics = f"{full_queue.api_url}/metrics"
    limit = f'{{"max-length":{QUEUE_LIMIT},"overflow":"reject-publish"}}'
    await asyncio.to_thread(
        rabbitmqctl,
        "set_policy",
        "-p",
        vhost,
        "--apply-to",
        "queues",
        "full",
        f"^{CHAT_QUEUE}$",
        limit,
    )
    async with httpx.AsyncClient(base_url=full_queue.api_url, timeout=10.0) as http:
        api = ApiClient(http)
        await fill(full_queue.broker_url)
        for _ in range(WAITING // 10):
            await asyncio.gather(*(api.post_chat(prompt("outbox")) for _ in range(10)))

        async def gauge(expected: int) -> bool:
            return value(await scrape(metrics), "chat_outbox_replies") == expected

        await eventually(lambda: gauge(WAITING), 30, what=f"the gauge to count {WAITING}")
