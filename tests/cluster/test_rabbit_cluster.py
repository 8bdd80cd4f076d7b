"""RabbitMQ as a cluster: the node leading `chat-message` stops while replies stream.

A quorum queue elects a new leader among the survivors; the processes connected to the stopped
node move to another one (RABBITMQ_URL lists them all). Every reply must still complete with
one attempt's whole text, every subscriber must rebuild exactly the stored text, nothing may be
left in the queue, and new chats must work on the two nodes left.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from shared.broker import CHAT_QUEUE
from tests.cluster.conftest import MOCK_DELAY_MS, ClusterStack
from tests.faults.audit import Expect, Tally, audit, settle
from tests.faults.subscribers import LiveSubscriber
from tests.helpers import ApiClient, MockClient, eventually, expected_reply, prompt
from tests.helpers import new_conversation_id as conversation

pytestmark = pytest.mark.cluster

CONVERSATIONS = 6
TOKENS = 80  # 80 tokens 30 ms apart: each reply streams for about 2.4 s
SETTLE_SECONDS = 60.0
QUEUE_COLUMNS = ("type", "messages_ready", "messages_unacknowledged", "consumers")
# Nothing left in the queue, and both responders consuming again (one moved to another node).
DRAINED = dict(zip(QUEUE_COLUMNS, ("quorum", "0", "0", "2"), strict=True))


@contextlib.asynccontextmanager
async def api_clients(urls: list[str]) -> AsyncIterator[list[ApiClient]]:
    async with contextlib.AsyncExitStack() as exits:
        clients = []
        for url in urls:
            http = await exits.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30.0))
            clients.append(ApiClient(http))
        yield clients


def whole_reply(reply_id: str, text: str) -> Expect:
    """Completed, with the first attempt's text or, if the job was redelivered, the second's."""
    texts = (expected_reply(text, TOKENS, 0), expected_reply(text, TOKENS, 1))
    return Expect(reply_id, texts=texts, prompt=text)


async def all_ready(apis: list[ApiClient]) -> None:
    """Every API answers /readyz 200: connected (to a surviving node) and hearing the fanout."""

    async def ready() -> bool:
        answers = [(await api.http.get("/readyz")).status_code for api in apis]
        return answers == [200] * len(apis)

    await eventually(ready, SETTLE_SECONDS, interval=0.2, what="every API ready")


async def test_stopping_the_queue_leader_loses_nothing(cluster_stack: ClusterStack) -> None:
    cluster = cluster_stack.cluster
    await asyncio.to_thread(cluster.start_stopped)  # all three nodes, whatever ran before
    async with api_clients(cluster_stack.api_urls) as apis:
        await all_ready(apis)
    leader = await asyncio.to_thread(cluster.queue_leader, CHAT_QUEUE)
    # Every node serves a process (RabbitMQ 3 puts the leader on the declaring responder's node,
    # 4 balances it): whichever leads, stopping it also cuts some process off its node.

    tally = Tally("chat-message leader node stopped")
    problems: list[str] = []
    async with api_clients(cluster_stack.api_urls) as apis, contextlib.AsyncExitStack() as exits:
        trials = []
        for index in range(CONVERSATIONS):
            api = apis[index % len(apis)]
            conversation_id = conversation()
            watchers = [
                await exits.enter_async_context(LiveSubscriber.open(other.ws_url, conversation_id))
                for other in apis
            ]
            text = prompt(f"cluster-{index}", tokens=TOKENS, delay_ms=MOCK_DELAY_MS)
            accepted = await api.post_chat(text, conversation_id)
            trials.append((api, conversation_id, accepted.message_id, text, watchers))
        for _, _, reply_id, _, watchers in trials:
            await watchers[0].streaming(reply_id, seq=3)

        await asyncio.to_thread(cluster.stop_node, leader)

        for api, conversation_id, reply_id, text, watchers in trials:
            problems += await settle(api, conversation_id, reply_id, watchers, SETTLE_SECONDS)
            tally.trials += 1
            expect = whole_reply(reply_id, text)
            problems += await audit(api, conversation_id, [expect], tally, watchers)

    assert not problems, "\n".join(problems)
    assert (tally.lost, tally.stuck, tally.duplicates, tally.mixed) == (0, 0, 0, 0), tally
    assert tally.subscriber_mismatches == 0, tally
    new_leader = await asyncio.to_thread(cluster.queue_leader, CHAT_QUEUE)
    assert new_leader is not leader and new_leader in cluster.running()

    async def queue_drained() -> bool:
        info = await asyncio.to_thread(cluster.queue_info, CHAT_QUEUE, *QUEUE_COLUMNS)
        return info == DRAINED

    await eventually(queue_drained, 30.0, what=f"chat-message to be {DRAINED}")
    assert all(process.running() for process in cluster_stack.responders)


async def test_new_chats_work_on_the_surviving_nodes(cluster_stack: ClusterStack) -> None:
    """With the node that led chat-message stopped, both APIs and both responders still serve.

    The test stops it itself, unless a test before left it stopped (the one above does).
    """
    cluster = cluster_stack.cluster
    if len(cluster.running()) == len(cluster.nodes):
        leader = await asyncio.to_thread(cluster.queue_leader, CHAT_QUEUE)
        await asyncio.to_thread(cluster.stop_node, leader)
    assert len(cluster.running()) == len(cluster.nodes) - 1
    async with (
        api_clients(cluster_stack.api_urls) as apis,
        httpx.AsyncClient(base_url=cluster_stack.mock_url, timeout=10.0) as mock_http,
    ):
        await all_ready(apis)
        mock = MockClient(mock_http)
        for api in apis:
            conversation_id = conversation()
            text = prompt("after-failover", tokens=10)
            async with LiveSubscriber.open(apis[-1].ws_url, conversation_id) as watcher:
                accepted = await api.post_chat(text, conversation_id)
                reply = await api.finished(conversation_id, accepted.message_id, SETTLE_SECONDS)
                seen = await watcher.finished(accepted.message_id)
            assert reply.message == expected_reply(text, 10)
            assert seen.message == reply.message
            assert len(await mock.requests(text)) == 1
