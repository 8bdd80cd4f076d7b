"""The API's reads of conversations, and the writes a user makes to one: stop, rename.

A conversation document (`conversations`, one per owner and conversation id) summarises its
messages for the list: title, creation and last-post times, message count. The writes that add
messages keep it current (`turns`, `summaries`); this module only reads it, renames and deletes
it. While its conversation is deleted it is a tombstone, which no read or rename here matches
(it has no owner, so no list shows it).

A conversation is `(owner, conversationId)`: every query names both, so one user never reads,
lists or stops anything of another's, even with the same conversation id.
"""

import base64
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pymongo import ASCENDING, DESCENDING, ReturnDocument

from shared.schemas import (
    FINISH_STOPPED,
    NOTHING_USED,
    Conversation,
    Message,
    Status,
    iso_timestamp,
)
from shared.store.database import Database
from shared.store.documents import (
    DELETING,
    LIVE,
    UNFINISHED_VALUES,
    conversation_key,
    conversations_of,
    find_message,
    messages_of,
    tombstone,
    with_parents,
)

LIST_ORDER = [("updatedAt", DESCENDING), ("conversationId", DESCENDING)]


class Position(NamedTuple):
    """Where a page of the list ended: the cursor is this, not an offset, so that conversations
    that become active meanwhile (and move to the top) do not shift the pages after it."""

    updated_at: datetime
    conversation_id: str

    def encode(self) -> str:
        milliseconds = int(self.updated_at.timestamp() * 1000)
        raw = f"{milliseconds}|{self.conversation_id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, cursor: str) -> "Position":
        """Raises ValueError for anything `encode` did not write."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            milliseconds, conversation_id = raw.split("|", 1)
            moment = datetime.fromtimestamp(int(milliseconds) / 1000, UTC)
        except (ValueError, UnicodeDecodeError, OverflowError, OSError) as error:
            raise ValueError("not a cursor this API gave out") from error
        return cls(moment, conversation_id)


def to_conversation(document: dict[str, Any]) -> Conversation:
    return Conversation(
        conversation_id=document["conversationId"],
        title=document["title"],
        created_at=iso_timestamp(document["createdAt"]),
        updated_at=iso_timestamp(document["updatedAt"]),
        message_count=document["messageCount"],
    )


class ConversationStore:
    def __init__(self, database: Database, model: str) -> None:
        self.messages = messages_of(database)
        self.conversations = conversations_of(database)
        self.model = model
        """OPENAI_MODEL: named on a reply stopped before it started, which no model wrote."""

    async def ensure_indexes(self) -> None:
        await self.messages.create_index(
            [("owner", ASCENDING), ("conversationId", ASCENDING), ("order", ASCENDING)]
        )
        await self.conversations.create_index([("owner", ASCENDING), *LIST_ORDER])

    async def list_conversations(
        self, owner: str, limit: int, before: Position | None
    ) -> tuple[list[Conversation], Position | None]:
        """Most recently active first; the position to continue from, None on the last page."""
        query: dict[str, Any] = {"owner": owner}
        if before is not None:
            query["$or"] = [
                {"updatedAt": {"$lt": before.updated_at}},
                {"updatedAt": before.updated_at, "conversationId": {"$lt": before.conversation_id}},
            ]
        cursor = self.conversations.find(query).sort(LIST_ORDER).limit(limit + 1)
        documents = [document async for document in cursor]
        page = documents[:limit]
        following = None
        if len(documents) > limit:
            last = page[-1]
            following = Position(last["updatedAt"], last["conversationId"])
        return [to_conversation(document) for document in page], following

    async def get_conversation(self, owner: str, conversation_id: str) -> Conversation | None:
        key = conversation_key(owner, conversation_id)
        document = await self.conversations.find_one({"_id": key, **LIVE})
        return None if document is None else to_conversation(document)

    async def locate(self, owner: str, message_id: str) -> Message | None:
        """A message of this owner's, in whichever conversation it is."""
        return await find_message(self.messages, {"_id": message_id, "owner": owner})

    async def question_of(self, reply: Message) -> Message | None:
        """The user message a reply answers (its parent; for replies before trees, recorded)."""
        document = await self.messages.find_one({"_id": reply.id}, {"userMessageId": 1})
        question = reply.parent_id or (document or {}).get("userMessageId")
        if question is None:
            return None
        return await self.get_message(reply.owner, reply.conversation_id, question)

    async def unfinished_replies(self, owner: str, conversation_id: str) -> list[Message]:
        """The conversation's replies still to be written or being written, oldest first."""
        query = {
            "conversationId": conversation_id,
            "from": "assistant",
            "status": {"$in": UNFINISHED_VALUES},
            "owner": owner,
        }
        cursor = self.messages.find(query).sort("order", ASCENDING)
        return [Message.from_document(document) async for document in cursor]

    async def delete(self, owner: str, conversation_id: str) -> bool:
        """Remove every document of the conversation; False if there was none.

        Its document becomes a tombstone first and goes last: a post being stored meanwhile, on
        any instance, finds it and withdraws rather than bring the conversation back (see
        `summaries`). Should this stop half-way, posts to it are refused until it is repeated.
        """
        key = conversation_key(owner, conversation_id)
        summary = await self.conversations.find_one_and_replace(
            {"_id": key}, tombstone(conversation_id), upsert=True
        )
        messages = await self.messages.delete_many(
            {"conversationId": conversation_id, "owner": owner}
        )
        await self.conversations.delete_one({"_id": key, DELETING: True})
        return summary is not None or messages.deleted_count > 0

    async def rename(self, owner: str, conversation_id: str, title: str) -> Conversation | None:
        key = conversation_key(owner, conversation_id)
        result = await self.conversations.update_one(
            {"_id": key, **LIVE}, {"$set": {"title": title}}
        )
        if result.matched_count != 1:
            return None
        return await self.get_conversation(owner, conversation_id)

    async def conversation_exists(self, owner: str, conversation_id: str) -> bool:
        existing = {"conversationId": conversation_id, "owner": owner}
        return await self.messages.count_documents(existing, limit=1) > 0

    async def list_messages(self, owner: str, conversation_id: str) -> list[Message]:
        query = {"conversationId": conversation_id, "owner": owner}
        cursor = self.messages.find(query).sort("order", ASCENDING)
        documents = with_parents([document async for document in cursor])
        return [Message.from_document(document) for document in documents]

    async def get_message(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None:
        query = {"_id": message_id, "conversationId": conversation_id, "owner": owner}
        return await find_message(self.messages, query)

    async def request_stop(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None:
        """Stop a reply: at once if not started, else flag it for its responder.

        A reply ended here is finished like any other: `finishReason`, `usage` (nothing used)
        and `model` (the configured one, the model it was meant for).
        Returns the reply as it now is (finished if it was not started), None if unknown.
        """
        where = {
            "_id": message_id,
            "conversationId": conversation_id,
            "from": "assistant",
            "owner": owner,
        }
        document = await self.messages.find_one_and_update(
            {**where, "status": Status.CREATED.value},
            {
                "$set": {
                    "status": Status.COMPLETED.value,
                    "stopped": True,
                    "finishReason": FINISH_STOPPED,
                    "usage": NOTHING_USED.model_dump(mode="json"),
                    "model": self.model,
                }
            },
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            document = await self.messages.find_one_and_update(
                {**where, "status": Status.STREAMING.value},
                {"$set": {"stopRequested": True}},
                return_document=ReturnDocument.AFTER,
            )
        if document is None:
            return await self.get_message(owner, conversation_id, message_id)
        return Message.from_document(document)
