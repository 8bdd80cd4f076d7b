"""Idempotency-Key: a retry gets the first answer; a key reused for another request gets 422.

A key is its user's: another user may send the same one, even with the same body.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from shared.schemas import ChatAccepted
from shared.store.database import Database
from tests.helpers import ApiClient, new_conversation_id, prompt
from tests.infra import Deployment
from tests.tokens import new_user, user_token


def _key() -> str:
    return f"key-{uuid.uuid4().hex}"


async def _post(api: ApiClient, key: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    response = await api.http.post("/chat", json=body, headers={"Idempotency-Key": key})
    return response.status_code, response.json()


async def test_a_key_reused_for_another_conversation_is_refused_and_leaks_nothing(
    api: ApiClient, database: Database
) -> None:
    """The issue's repro: Mallory reuses Alice's key and must get neither her ids nor a 202."""
    key = _key()
    alice, mallory = new_conversation_id(), new_conversation_id()
    secret = prompt("secret of alice", tokens=2, delay_ms=0)
    status, first = await _post(api, key, {"message": secret, "conversationId": alice})
    assert status == 202
    accepted = ChatAccepted.model_validate(first)
    await api.finished(alice, accepted.message_id)

    body = {"message": "hello from mallory", "conversationId": mallory}
    status, answer = await _post(api, key, body)

    assert status == 422
    assert [error["loc"] for error in answer["detail"]] == [["header", "idempotency-key"]]
    assert "different request" in answer["detail"][0]["msg"]
    for leaked in (alice, accepted.user_message_id, accepted.message_id, "secret"):
        assert leaked not in str(answer)
    assert await api.conversation_status(mallory) == 404
    assert await database["messages"].count_documents({"conversationId": mallory}) == 0
    stored = await api.conversation(alice)
    assert [message.id for message in stored.messages] == [
        accepted.user_message_id,
        accepted.message_id,
    ]


async def test_a_key_reused_with_another_message_in_the_same_conversation_is_refused(
    api: ApiClient, database: Database
) -> None:
    key = _key()
    conversation_id = new_conversation_id()
    body = {"message": prompt("first", tokens=2, delay_ms=0), "conversationId": conversation_id}
    status, first = await _post(api, key, body)
    assert status == 202

    status, _ = await _post(api, key, {**body, "message": "something else"})

    assert status == 422
    assert await database["messages"].count_documents({"conversationId": conversation_id}) == 2
    await api.finished(conversation_id, first["messageId"])


async def test_a_retried_request_gets_the_first_answer_on_any_instance(
    api: ApiClient, api_b: ApiClient, database: Database
) -> None:
    """Same key, same body: the first answer again, even for a new conversation (no id sent)."""
    key = _key()
    body = {"message": prompt("retried", tokens=2, delay_ms=0)}
    status, first = await _post(api, key, body)
    assert status == 202

    retries = [await _post(client, key, body) for client in (api, api_b)]

    assert retries == [(202, first), (202, first)]
    conversation_id = first["conversationId"]
    assert await database["messages"].count_documents({"conversationId": conversation_id}) == 2
    await api.finished(conversation_id, first["messageId"])


@pytest.fixture
async def two_users(auth_stack: Deployment) -> AsyncIterator[list[tuple[str, ApiClient]]]:
    """Two users of the authenticated stack, each with a token, on its two API instances."""
    names = [new_user(), new_user()]
    https = [
        httpx.AsyncClient(
            base_url=url, timeout=10.0, headers={"authorization": f"Bearer {user_token(name)}"}
        )
        for name, url in zip(names, auth_stack.api_urls, strict=True)
    ]
    try:
        yield [(name, ApiClient(http)) for name, http in zip(names, https, strict=True)]
    finally:
        for http in https:
            await http.aclose()


async def test_two_users_with_the_same_key_and_body_each_get_their_own_turn(
    two_users: list[tuple[str, ApiClient]], auth_database: Database
) -> None:
    """A key belongs to its user: Bob's request is stored and answered as his own, and Alice's
    retry still gets her first answer.
    """
    (alice_name, alice), (bob_name, bob) = two_users
    key, conversation_id = _key(), new_conversation_id()
    body = {
        "message": prompt("same words", tokens=2, delay_ms=0),
        "conversationId": conversation_id,
    }

    alice_status, alice_first = await _post(alice, key, body)
    bob_status, bob_first = await _post(bob, key, body)

    assert (alice_status, bob_status) == (202, 202), (alice_first, bob_first)
    theirs = [ChatAccepted.model_validate(answer) for answer in (alice_first, bob_first)]
    assert theirs[0].message_id != theirs[1].message_id
    assert theirs[0].user_message_id != theirs[1].user_message_id
    for user, accepted in zip((alice, bob), theirs, strict=True):
        reply = await user.finished(conversation_id, accepted.message_id)
        stored = await user.conversation(conversation_id)
        assert [message.id for message in stored.messages] == [accepted.user_message_id, reply.id]
        assert stored.messages[0].message == body["message"]
    assert await _post(alice, key, body) == (202, alice_first)
    documents = auth_database["messages"].find({"conversationId": conversation_id})
    owners = sorted([document["owner"] async for document in documents])
    assert owners == sorted([alice_name, alice_name, bob_name, bob_name])


@pytest.mark.parametrize("instances", [1, 2], ids=["one-instance", "two-instances"])
async def test_concurrent_posts_with_one_key_and_different_bodies_store_one_turn(
    api: ApiClient, api_b: ApiClient, database: Database, instances: int
) -> None:
    """Whichever request wins the race gets its 202, the other a 422; only the winner's
    turn is stored. Several rounds, so the race goes either way and hits either path.
    """
    clients = (api, api_b if instances == 2 else api)
    for _ in range(5):
        key, conversation_id = _key(), new_conversation_id()
        bodies = [
            {
                "message": prompt(f"racer {index}", tokens=2, delay_ms=0),
                "conversationId": conversation_id,
            }
            for index in range(2)
        ]

        answers = await asyncio.gather(
            *(_post(client, key, body) for client, body in zip(clients, bodies, strict=True))
        )

        assert sorted(status for status, _ in answers) == [202, 422], answers
        winner = next(index for index, (status, _) in enumerate(answers) if status == 202)
        refused = answers[1 - winner][1]
        assert [error["loc"] for error in refused["detail"]] == [["header", "idempotency-key"]]
        accepted = ChatAccepted.model_validate(answers[winner][1])
        stored = await api.conversation(conversation_id)
        assert [message.id for message in stored.messages] == [
            accepted.user_message_id,
            accepted.message_id,
        ]
        assert stored.messages[0].message == bodies[winner]["message"]
        assert await database["messages"].count_documents({"conversationId": conversation_id}) == 2
        await api.finished(conversation_id, accepted.message_id)
