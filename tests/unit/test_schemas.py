"""The wire shapes: request validation and the message's JSON form."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from shared.schemas import ChatAccepted, ChatRequest, ConversationMessages, Message, Status
from tests.factories import message


@pytest.mark.parametrize(
    "body",
    [
        {"message": "x"},
        {"message": "x" * 32_000},
        {"message": " padded "},
        {"message": "hi", "conversationId": "a"},
        {"message": "hi", "conversationId": "Z" * 64},
        {"message": "hi", "conversationId": "AZaz09_-"},
        {"message": "hi", "conversationId": None},
    ],
)
def test_valid_requests(body: dict[str, Any]) -> None:
    request = ChatRequest.model_validate(body)
    assert request.message == body["message"], "the text is kept as sent, not stripped"
    assert request.conversation_id == body.get("conversationId")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "message"),
        ({"message": ""}, "message"),
        ({"message": " \n\t\u00a0"}, "message"),
        ({"message": "x" * 32_001}, "message"),
        ({"message": 1}, "message"),
        ({"message": "hi", "conversationId": ""}, "conversationId"),
        ({"message": "hi", "conversationId": "a" * 65}, "conversationId"),
        ({"message": "hi", "conversationId": "a b"}, "conversationId"),
        ({"message": "hi", "conversationId": "x/y"}, "conversationId"),
        ({"message": "hi", "conversationId": "a\n"}, "conversationId"),
        ({"message": "hi", "conversationId": 7}, "conversationId"),
    ],
)
def test_invalid_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ChatRequest.model_validate(body)
    assert [error["loc"][0] for error in raised.value.errors()] == [field]


def test_message_round_trips_with_the_from_alias_and_no_error_when_none() -> None:
    wire = {
        "id": "m1",
        "conversationId": "c1",
        "from": "assistant",
        "message": "hello",
        "status": "completed",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "seq": 3,
    }
    parsed = Message.model_validate(wire)
    assert parsed.sender == "assistant"
    assert parsed.status == Status.COMPLETED
    dumped = parsed.to_wire()
    assert "error" not in dumped
    assert "sender" not in dumped and "conversation_id" not in dumped
    assert {key: dumped[key] for key in wire} == wire
    assert Message.model_validate_json(parsed.model_dump_json()) == parsed
    assert "error" not in json.loads(parsed.model_dump_json())


def test_failed_message_carries_its_error() -> None:
    failed = message("assistant", "part", Status.FAILED, error="model API answered 500")
    assert failed.to_wire()["error"] == "model API answered 500"
    assert Message.model_validate(failed.to_wire()) == failed


@pytest.mark.parametrize(
    "change",
    [{"from": "system"}, {"status": "done"}, {"seq": -1}, {"message": None}],
)
def test_message_rejects_values_outside_the_contract(change: dict[str, Any]) -> None:
    wire = {**message().to_wire(), **change}
    with pytest.raises(ValidationError):
        Message.model_validate(wire)


def test_from_document_maps_the_mongodb_id() -> None:
    document = {**message(message_id="abc").to_wire(), "_id": "abc", "order": 4}
    del document["id"]
    assert Message.from_document(document).id == "abc"


def test_accepted_and_conversation_shapes_use_camel_case() -> None:
    accepted = ChatAccepted(conversation_id="c", user_message_id="u", message_id="m")
    assert accepted.model_dump() == {
        "conversationId": "c",
        "userMessageId": "u",
        "messageId": "m",
        "message": "Message received, AI is responding...",
        "status": "streaming",
    }
    listing = ConversationMessages(conversation_id="c", messages=[message()])
    assert set(listing.model_dump()) == {"conversationId", "messages"}
    assert "from" in listing.model_dump()["messages"][0]
