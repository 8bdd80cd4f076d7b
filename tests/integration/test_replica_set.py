"""MongoDB as a replica set: its primary steps down while a reply streams.

The services connect with `replicaSet=secantus` (no `directConnection`), as they would to a
replica set or Atlas, so the driver follows the set's topology. SecantusDB is a one-member
set whose `replSetStepDown` makes it a secondary for the period asked: writes fail with "not
primary", `hello` says there is no primary, and then it is primary again. That is what the
services meet during an election; what they must show users: no 500, a clear 503 at worst
(the request may be retried with its Idempotency-Key), nothing lost, no reply left streaming.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pymongo import AsyncMongoClient

from devstack.stack import Stack, start_secantus
from shared.schemas import FINISHED, ChatAccepted, Status
from shared.store.database import Database, Document
from tests.clients import Subscriber
from tests.helpers import ApiClient, expected_reply, new_conversation_id, prompt
from tests.infra import rabbitmq, secantus_available, service_env

REPLICA_SET = "secantus"
STEP_DOWN_SECONDS = 5
TOKENS = 300
DELAY_MS = 20
POSTS = 6
SETTLE_SECONDS = 90.0


@dataclass
class ReplicaSet:
    api_url: str
    database: Database
    """The stack's database, reached as a replica set, as the services reach it."""
    server: AsyncMongoClient[Document]
    """The one member itself (a direct connection): it answers while it has no primary."""


@pytest.fixture
async def replica_set(log_dir: Path, model_url: str) -> AsyncIterator[ReplicaSet]:
    """A SecantusDB of its own (the step-down is server-wide), a responder and an API on it."""
    if not secantus_available():
        pytest.skip("needs secantusd-py: a replica set whose primary the test can step down")
    own_logs = log_dir / "replica-set"
    server, direct_url = start_secantus(own_logs, ":memory:")
    url = f"mongodb://127.0.0.1:{urlsplit(direct_url).port}/?replicaSet={REPLICA_SET}"
    client: AsyncMongoClient[Document] = AsyncMongoClient(url)
    member: AsyncMongoClient[Document] = AsyncMongoClient(direct_url)
    try:
        with rabbitmq("chat-test-replica-set") as broker:
            env = service_env(url, broker, model_url)
            stack = Stack(env=env, log_dir=own_logs)
            try:
                stack.start_responder(name="rs-responder")
                _, api_url = stack.start_api(name="rs-api")
                yield ReplicaSet(api_url, client[env["MONGODB_DB"]], member)
            finally:
                stack.stop()
    finally:
        await client.close()
        await member.close()
        server.stop()


async def step_down(member: AsyncMongoClient[Document], seconds: int) -> None:
    """`replSetStepDown` on the primary: a secondary, and no primary, for `seconds`."""
    await member.admin.command({"replSetStepDown": seconds, "force": True})
    hello = await member.admin.command("hello")
    assert not hello["isWritablePrimary"] and "primary" not in hello, hello


async def post_until_accepted(
    api: ApiClient, text: str, conversation_id: str, statuses: list[int]
) -> ChatAccepted:
    """POST with an Idempotency-Key, retried with the same key while the answer is 503."""
    key = f"rs-{uuid.uuid4().hex}"
    body = {"message": text, "conversationId": conversation_id}
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        response = await api.http.post("/chat", json=body, headers={"Idempotency-Key": key})
        statuses.append(response.status_code)
        if response.status_code != 503 or time.monotonic() > deadline:
            break
        assert response.json()["detail"], "a 503 says why"
        await asyncio.sleep(0.5)
    assert response.status_code == 202, response.text
    return ChatAccepted.model_validate(response.json())


async def test_a_step_down_mid_reply_loses_nothing(replica_set: ReplicaSet) -> None:
    """Posts and reads during the step-down answer 202, 200 or a clear 503, never 500; each
    post retried with its key is stored once and answered; the streaming reply ends completed
    with its exact text, live and stored; no reply is left unfinished; posting works after."""
    async with httpx.AsyncClient(base_url=replica_set.api_url, timeout=60.0) as http:
        api = ApiClient(http)
        conversation_id = new_conversation_id()
        text = prompt("stepped down", tokens=TOKENS, delay_ms=DELAY_MS)
        statuses: list[int] = []
        async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
            streaming = await api.post_chat(text, conversation_id)
            await subscriber.until_words(streaming.message_id, 3)
            await step_down(replica_set.server, STEP_DOWN_SECONDS)
            read = await http.get(f"/conversations/{conversation_id}/messages")
            statuses.append(read.status_code)
            during = await asyncio.gather(
                *(
                    post_until_accepted(
                        api, prompt(f"during {index}", tokens=3), new_conversation_id(), statuses
                    )
                    for index in range(POSTS)
                )
            )
            live = await subscriber.until_finished(streaming.message_id, SETTLE_SECONDS)
        assert set(statuses) <= {200, 202, 503}, statuses
        assert live.status == Status.COMPLETED, live
        assert live.message == expected_reply(text, TOKENS), "one attempt's whole text, live"
        assert await api.message(conversation_id, streaming.message_id) == live
        for accepted in during:
            answered = await api.finished(
                accepted.conversation_id, accepted.message_id, SETTLE_SECONDS
            )
            assert answered.status == Status.COMPLETED, answered
            stored = await api.conversation(accepted.conversation_id)
            assert [message.id for message in stored.messages] == [
                accepted.user_message_id,
                accepted.message_id,
            ], "each post stored once, whatever its retries"
        unfinished = {"status": {"$nin": [status.value for status in FINISHED]}}
        assert await replica_set.database["messages"].count_documents(unfinished) == 0
        _, after = await api.ask(prompt("after the step-down", tokens=3), new_conversation_id())
        assert after.status == Status.COMPLETED
