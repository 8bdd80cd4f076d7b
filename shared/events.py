"""Live events: the WebSocket frames of the contract, carried in batches on the fanout exchange.

Deltas are the per-token hot path, so they travel as plain dicts encoded with orjson; whole
messages inside the other events are validated with `Message` when they are received.
"""

from collections.abc import Sequence
from typing import Any, Final, Literal, NotRequired, TypedDict

import orjson

from shared.schemas import Message, Status

SNAPSHOT: Final = "snapshot"
CREATED: Final = "message.created"
DELTA: Final = "message.delta"
UPDATED: Final = "message.updated"
COMPLETED: Final = "message.completed"
FAILED: Final = "message.failed"
CONVERSATION_DELETED: Final = "conversation.deleted"

MessageEventType = Literal[
    "message.created", "message.updated", "message.completed", "message.failed"
]

FINISHED_EVENT: dict[Status, MessageEventType] = {
    Status.COMPLETED: COMPLETED,
    Status.FAILED: FAILED,
}
"""The event that announces a message in each finished status (`schemas.FINISHED`)."""


class DeltaEvent(TypedDict):
    type: Literal["message.delta"]
    owner: str
    conversationId: str
    messageId: str
    seq: int
    delta: str
    attempt: int
    reasoning: NotRequired[str]


class MessageEvent(TypedDict):
    type: MessageEventType
    message: dict[str, Any]


class ConversationDeletedEvent(TypedDict):
    type: Literal["conversation.deleted"]
    owner: str
    conversationId: str


Event = DeltaEvent | MessageEvent | ConversationDeletedEvent


def delta_event(
    owner: str,
    conversation_id: str,
    message_id: str,
    attempt: int,
    seq: int,
    text: str,
    reasoning: str = "",
) -> DeltaEvent:
    """The next delta of a reply; `reasoning` only when this delta carries some.

    `owner` routes it to its user's subscribers only; clients are not sent it.
    """
    event: DeltaEvent = {
        "type": DELTA,
        "owner": owner,
        "conversationId": conversation_id,
        "messageId": message_id,
        "seq": seq,
        "delta": text,
        "attempt": attempt,
    }
    if reasoning:
        event["reasoning"] = reasoning
    return event


def message_event(kind: MessageEventType, message: Message) -> MessageEvent:
    return {"type": kind, "message": message.to_wire()}


def conversation_deleted_event(owner: str, conversation_id: str) -> ConversationDeletedEvent:
    return {"type": CONVERSATION_DELETED, "owner": owner, "conversationId": conversation_id}


def finished_event(message: Message) -> MessageEvent:
    return message_event(FINISHED_EVENT[message.status], message)


def encode_batch(events: Sequence[Event]) -> bytes:
    return orjson.dumps(events)


def decode_batch(body: bytes) -> list[dict[str, Any]]:
    events = orjson.loads(body)
    if not isinstance(events, list):
        raise ValueError("an event batch must be a JSON array")
    return events
