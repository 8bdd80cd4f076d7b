"""Bad input to POST /chat: 422 naming the field, and nothing stored."""

import json
from typing import Any

import pytest

from shared.store.database import Database
from tests.helpers import ApiClient, new_conversation_id, prompt

LIMIT = 32_000

BAD_MESSAGES: dict[str, dict[str, Any]] = {
    "message missing": {},
    "message empty": {"message": ""},
    "message whitespace only": {"message": " \t\n  "},
    "message too long": {"message": "x" * (LIMIT + 1)},
    "message not a string": {"message": 42},
    "message null": {"message": None},
    "message a list": {"message": ["hello"]},
}

BAD_CONVERSATION_IDS: dict[str, Any] = {
    "empty": "",
    "65 characters": "a" * 65,
    "space": "a b",
    "slash": "x/y",
    "dot": "a.b",
    "non-ascii letter": "caf\u00e9",
    "number": 123,
    "object": {"id": "abc"},
}


async def _counts(database: Database) -> tuple[int, int]:
    """All conversations and messages in the stack's database; posts are the only inserts."""
    return (
        await database["conversations"].count_documents({}),
        await database["messages"].count_documents({}),
    )


def _fields_named(response_json: dict[str, Any]) -> list[str]:
    """Every location FastAPI reports, flattened to strings, to find the field named."""
    details = response_json["detail"]
    assert isinstance(details, list) and details, response_json
    for detail in details:
        assert detail["msg"], detail  # says why, not only where
    return [".".join(str(part) for part in detail["loc"]) for detail in details]


@pytest.mark.parametrize("body", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
async def test_bad_message_is_422_naming_message_and_stores_nothing(
    api: ApiClient, database: Database, body: dict[str, Any]
) -> None:
    conversation_id = new_conversation_id()
    before = await _counts(database)
    response = await api.http.post("/chat", json={**body, "conversationId": conversation_id})
    assert response.status_code == 422, response.text
    assert any(location.endswith("message") for location in _fields_named(response.json()))
    assert await api.conversation_status(conversation_id) == 404
    assert await _counts(database) == before


@pytest.mark.parametrize(
    "conversation_id", BAD_CONVERSATION_IDS.values(), ids=BAD_CONVERSATION_IDS.keys()
)
async def test_bad_conversation_id_is_422_naming_it_and_creates_nothing(
    api: ApiClient, database: Database, conversation_id: Any
) -> None:
    before = await _counts(database)
    response = await api.http.post(
        "/chat", json={"message": prompt("bad-id"), "conversationId": conversation_id}
    )
    assert response.status_code == 422, response.text
    assert any(location.endswith("conversationId") for location in _fields_named(response.json()))
    assert await database["conversations"].count_documents({"_id": conversation_id}) == 0
    assert await database["messages"].count_documents({"conversationId": conversation_id}) == 0
    assert await _counts(database) == before


@pytest.mark.parametrize(
    ("content", "description"),
    [
        (b"message=hello", "form data"),
        (b'{"message": "unterminated', "truncated JSON"),
        (b"", "empty body"),
    ],
)
async def test_body_that_is_not_json_is_422(
    api: ApiClient, database: Database, content: bytes, description: str
) -> None:
    before = await _counts(database)
    response = await api.http.post(
        "/chat", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, f"{description}: {response.text}"
    assert _fields_named(response.json())[0].startswith("body")
    assert await _counts(database) == before


@pytest.mark.parametrize(
    "body", [[{"message": "hello"}], "hello", 42, None], ids=["array", "string", "number", "null"]
)
async def test_body_that_is_not_an_object_is_422(
    api: ApiClient, database: Database, body: Any
) -> None:
    before = await _counts(database)
    response = await api.http.post(
        "/chat", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert _fields_named(response.json())[0].startswith("body")
    assert await _counts(database) == before


async def test_message_of_exactly_the_limit_is_accepted_and_stored_whole(api: ApiClient) -> None:
    head = prompt("limit", tokens=2, delay_ms=0) + " "
    text = head + "y" * (LIMIT - len(head))
    assert len(text) == LIMIT
    accepted = await api.post_chat(text, new_conversation_id())
    user = await api.message(accepted.conversation_id, accepted.user_message_id)
    assert user.message == text
    await api.finished(accepted.conversation_id, accepted.message_id)


@pytest.mark.parametrize("conversation_id", ["a", "A" * 64, "Az09_-", "_", "-"])
async def test_conversation_id_edges_are_accepted(api: ApiClient, conversation_id: str) -> None:
    """1 and 64 characters and every allowed character class pass; the id is used as given."""
    accepted = await api.post_chat(prompt("edge", tokens=1, delay_ms=0), conversation_id)
    assert accepted.conversation_id == conversation_id
    await api.finished(conversation_id, accepted.message_id)
