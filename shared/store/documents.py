"""What every part of the store shares: ids, creation order and the message documents.

Every message is one document of the `messages` collection, with `_id` its id and `order` its
creation time; replies also carry a lease (`leaseUntil`) while a responder writes them.
"""

import secrets
import time
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId

from shared.schemas import UNFINISHED, Message
from shared.store.database import Collection, Database

MESSAGES = "messages"
CONVERSATIONS = "conversations"
UNFINISHED_VALUES = [status.value for status in UNFINISHED]
DELETING = "deleting"
"""Marks a conversation document as a tombstone: its conversation is being deleted."""
LIVE: dict[str, Any] = {DELETING: {"$exists": False}}
"""Matches a conversation document that is not a tombstone."""


class CreationOrder:
    """Nanosecond creation times, strictly rising within a process.

    Messages sort by this within a conversation. Across API instances it is the order of the
    hosts' clocks, which holds for any client that waits for one answer before posting again.
    """

    def __init__(self) -> None:
        self.last = 0

    def tick(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        return self.last


ORDER = CreationOrder()


def new_conversation_id() -> str:
    """128 random bits: a conversation id the server makes cannot be guessed from another."""
    return secrets.token_urlsafe(16)


def new_id() -> str:
    """Short, unique and time-ordered: ids travel in every delta frame."""
    return str(ObjectId())


def now() -> datetime:
    return datetime.now(UTC)


def messages_of(database: Database) -> Collection:
    return database[MESSAGES]


def conversations_of(database: Database) -> Collection:
    return database[CONVERSATIONS]


def conversation_key(owner: str, conversation_id: str) -> str:
    """The `_id` of a conversation document: unique, since a conversation id holds no `/`."""
    return f"{owner}/{conversation_id}"


def tombstone(conversation_id: str) -> dict[str, Any]:
    """What a conversation document is while its conversation is deleted: no owner, so no list
    shows it, and its `_id` taken, so no write can recreate the conversation meanwhile."""
    return {"conversationId": conversation_id, DELETING: True}


def free() -> dict[str, Any]:
    """A reply nobody holds: not started, or `streaming` under a lease that ran out.

    Written without `$or`, and matched by `_id` with `update_one` rather than
    `find_one_and_update`: SecantusDB scans the whole collection for either.
    """
    return {"status": {"$in": UNFINISHED_VALUES}, "leaseUntil": {"$not": {"$gte": now()}}}


def to_document(message: Message, order: int, extra: dict[str, Any]) -> dict[str, Any]:
    document = message.model_dump(exclude={"id"}, exclude_none=True, mode="json")
    return {"_id": message.id, "order": order, "parentId": message.parent_id, **document, **extra}


def with_parents(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents of one conversation, in creation order, each with its `parentId`.

    Messages stored before messages formed a tree have no `parentId`: they read as one chain,
    each following the message created before it.
    """
    previous = None
    for document in documents:
        if "parentId" not in document:
            document["parentId"] = previous
        previous = document["_id"]
    return documents


def path_to_message(message_id: str, earlier: list[dict[str, Any]]) -> list[Message]:
    """The messages from the first one to `message_id`, following parents back from it."""
    by_id = {document["_id"]: document for document in earlier}
    path: list[dict[str, Any]] = []
    step: str | None = message_id
    while step is not None and step in by_id and len(path) < len(earlier):
        path.append(by_id[step])
        step = by_id[step]["parentId"]
    return [Message.from_document(document) for document in reversed(path)]


async def find_message(messages: Collection, query: dict[str, Any]) -> Message | None:
    document = await messages.find_one(query)
    return None if document is None else Message.from_document(document)
