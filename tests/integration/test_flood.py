"""A flooded conversation (issue 9.5): replies waiting for their turn cost nothing, and one
conversation's backlog does not delay the others.

Replies in a conversation are written one at a time, so 300 quick posts into one leave ~300
replies waiting. When each of them polled MongoDB while it waited, the server ran at full CPU
and an unrelated conversation's first token took 40 times as long as on an idle system.

The flood runs on a stack of its own (its own vhost, and its own SecantusDB when the session
starts one), so the server's counters are the flood's, and tearing the stack down ends it.
"""

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pymongo import AsyncMongoClient

from shared.schemas import ChatAccepted, Status
from shared.store.database import Document
from tests.clients import Subscriber
from tests.helpers import ApiClient, eventually, new_conversation_id, prompt
from tests.infra import Deployment, deployment, mongodb_server, rabbitmq, service_env

FLOOD = 300
POSTS_AT_ONCE = 10
SLOW_REPLY = {"tokens": 600, "delay_ms": 500}
"""5 minutes per reply: the flood's first reply streams, and the rest wait, until the test ends."""
SAMPLES = 5
SLOWDOWN_ALLOWED = 2.0
NOISE_ALLOWED_SECONDS = 0.150
"""Added latency always allowed, so a 20 ms idle figure does not make the bound noise."""
QUIET_SECONDS = 3.0
READS_PER_SECOND_ALLOWED = 2.0
"""Less than one read per waiting reply every two minutes: no polling per waiting reply."""
SAMPLE_LIMIT = 10.0
"""A first token later than this many times the allowed wait counts as that late: it fails the
bound either way, and a slow system still ends the test soon."""
TIMEOUT = 30.0


@pytest.fixture
def flood_stack(log_dir: Path, model_url: str) -> Iterator[Deployment]:
    """One API and one responder that hands its jobs back at once when stopped, so the
    teardown does not wait for the flood."""
    flood_logs = log_dir / "flood"
    with mongodb_server(flood_logs) as mongodb_url, rabbitmq("chat-test-flood") as broker:
        env = service_env(mongodb_url, broker, model_url)
        with deployment(
            "flood", flood_logs, env, broker, apis=1, SHUTDOWN_GRACE_SECONDS="0"
        ) as running:
            yield running


@pytest.fixture
async def flood_api(flood_stack: Deployment) -> AsyncIterator[ApiClient]:
    async with httpx.AsyncClient(base_url=flood_stack.api_urls[0], timeout=TIMEOUT) as http:
        yield ApiClient(http)


@pytest.fixture
async def flood_mongodb(flood_stack: Deployment) -> AsyncIterator[AsyncMongoClient[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(flood_stack.mongodb_url)
    try:
        yield client
    finally:
        await client.close()


async def first_token_seconds(api: ApiClient, limit: float) -> float:
    """From posting into a fresh conversation to its reply's first token on the WebSocket, or
    `limit` if the token has not come by then."""
    conversation_id = new_conversation_id()
    async with Subscriber.open(api.ws_url, conversation_id, TIMEOUT) as subscriber:
        posted = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                accepted = await api.post_chat(
                    prompt("fresh", tokens=2, delay_ms=0), conversation_id
                )
                await subscriber.until(lambda s: s.seq(accepted.message_id) >= 1, TIMEOUT)
        except TimeoutError:
            return limit
        return time.monotonic() - posted


async def median_first_token_seconds(api: ApiClient, limit: float = TIMEOUT) -> float:
    return statistics.median([await first_token_seconds(api, limit) for _ in range(SAMPLES)])


async def reads_served(mongodb: AsyncMongoClient[Document]) -> int:
    """Finds and getMores the MongoDB server has answered since it started."""
    counters = (await mongodb.admin.command("serverStatus"))["opcounters"]
    return int(counters["query"] + counters["getmore"])


async def replies_held(metrics_url: str) -> float:
    """The responder's `chat_replies_in_progress`: the jobs it has in hand, waiting or not."""
    async with httpx.AsyncClient(timeout=TIMEOUT) as http:
        response = await http.get(metrics_url)
    assert response.status_code == 200, response.text
    return next(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "chat_replies_in_progress"
    )


async def flood(api: ApiClient, conversation_id: str) -> ChatAccepted:
    """Post FLOOD slow messages into one conversation; returns the first, whose reply streams
    while the others wait."""
    first = await api.post_chat(prompt("flood-0", **SLOW_REPLY), conversation_id)
    gate = asyncio.Semaphore(POSTS_AT_ONCE)

    async def post(index: int) -> None:
        async with gate:
            await api.post_chat(prompt(f"flood-{index}", **SLOW_REPLY), conversation_id)

    await asyncio.gather(*(post(index) for index in range(1, FLOOD)))
    return first


async def test_a_flooded_conversation_costs_nothing_and_delays_no_other(
    flood_stack: Deployment, flood_api: ApiClient, flood_mongodb: AsyncMongoClient[Document]
) -> None:
    idle = await median_first_token_seconds(flood_api)

    flooded_id = new_conversation_id()
    posting_started = time.monotonic()
    first = await flood(flood_api, flooded_id)
    posting = time.monotonic() - posting_started
    metrics_url = f"http://127.0.0.1:{flood_stack.responders[0].env['METRICS_PORT']}/metrics"

    async def all_held() -> bool:
        return await replies_held(metrics_url) >= FLOOD

    await eventually(all_held, TIMEOUT, what=f"the responder to hold all {FLOOD} flood replies")

    window_started, reads_before = time.monotonic(), await reads_served(flood_mongodb)
    await asyncio.sleep(QUIET_SECONDS)
    reads = await reads_served(flood_mongodb) - reads_before
    reads_per_second = reads / (time.monotonic() - window_started)

    allowed = max(idle * SLOWDOWN_ALLOWED, idle + NOISE_ALLOWED_SECONDS)
    limit = allowed * SAMPLE_LIMIT
    flooded = await median_first_token_seconds(flood_api, limit)
    streaming = await flood_api.message(flooded_id, first.message_id)
    assert streaming.status == Status.STREAMING, "precondition: the flood waited throughout"

    measured = (
        f"{FLOOD} replies waiting in one conversation (posted in {posting:.1f} s): "
        f"MongoDB answered {reads_per_second:.1f} reads/s "
        f"(allowed {READS_PER_SECOND_ALLOWED:.0f}); "
        f"a fresh conversation's first token took {flooded * 1000:.0f} ms against "
        f"{idle * 1000:.0f} ms idle (allowed {allowed * 1000:.0f} ms; medians of {SAMPLES}, "
        f"a sample counting at most {limit * 1000:.0f} ms)"
    )
    print(measured)
    assert reads_per_second <= READS_PER_SECOND_ALLOWED, f"waiting replies poll: {measured}"
    assert flooded <= allowed, f"the backlog delays other conversations: {measured}"
