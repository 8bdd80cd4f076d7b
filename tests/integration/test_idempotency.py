"""Idempotency-Key: a retry gets the first answer; a key reused for another request gets 422."""

import uuid
from typing import Any

from shared.schemas import ChatAccepted
from shared.store.database import Database
from tests.helpers import ApiClient, new_conversation_id, prompt


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
