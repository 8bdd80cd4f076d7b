"""The responder's reads and writes of the replies it writes.

A reply carries a lease: the responder writing it renews it, so a reply whose responder
vanished can be taken over (by a redelivered job) or, if nobody does, ended as failed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from shared.schemas import Message, Status
from shared.store.documents import UNFINISHED_VALUES, find_message, free, messages_of, now


class TextSoFar(Protocol):
    """What the responder hands over to be saved: one attempt's text and its delta count."""

    @property
    def message_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def seq(self) -> int: ...


@dataclass(slots=True)
class StoredReply:
    """A reply with what the responder needs beyond the wire message."""

    message: Message
    order: int
    stop_requested: bool

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "StoredReply":
        return cls(
            Message.from_document(document),
            int(document["order"]),
            bool(document.get("stopRequested")),
        )


class ReplyStore:
    def __init__(self, database: AsyncDatabase) -> None:
        self.messages = messages_of(database)

    async def ensure_indexes(self) -> None:
        await self.messages.create_index([("conversationId", ASCENDING), ("order", ASCENDING)])
        await self.messages.create_index(
            "leaseUntil", partialFilterExpression={"status": Status.STREAMING.value}
        )

    async def get_reply(self, message_id: str) -> StoredReply | None:
        document = await self.messages.find_one({"_id": message_id, "from": "assistant"})
        return None if document is None else StoredReply.from_document(document)

    async def has_unfinished_before(self, reply: StoredReply) -> bool:
        """Whether an earlier reply in the conversation still has to finish first."""
        earlier = {
            "conversationId": reply.message.conversation_id,
            "from": "assistant",
            "order": {"$lt": reply.order},
            "status": {"$in": UNFINISHED_VALUES},
        }
        return await self.messages.count_documents(earlier, limit=1) > 0

    async def history_before(self, reply: StoredReply, limit: int) -> list[Message]:
        """The last `limit` messages before `reply`, oldest first."""
        before = {"conversationId": reply.message.conversation_id, "order": {"$lt": reply.order}}
        cursor = self.messages.find(before).sort("order", -1).limit(limit)
        newest_first = [Message.from_document(document) async for document in cursor]
        return newest_first[::-1]

    async def claim_reply(self, reply: StoredReply, lease: timedelta) -> StoredReply | None:
        """Start the next attempt at a reply nobody holds, from an empty text; None if held."""
        attempt = reply.message.attempt
        result = await self.messages.update_one(
            {"_id": reply.message.id, "attempt": attempt, **free()},
            {
                "$set": {
                    "status": Status.STREAMING.value,
                    "message": "",
                    "seq": 0,
                    "attempt": attempt + 1,
                    "leaseUntil": now() + lease,
                },
                "$unset": {"error": ""},
            },
        )
        if result.modified_count != 1:
            return None
        started = reply.message.model_copy(
            update={
                "status": Status.STREAMING,
                "message": "",
                "seq": 0,
                "attempt": attempt + 1,
                "error": None,
            }
        )
        return StoredReply(started, reply.order, reply.stop_requested)

    async def renew_leases(self, message_ids: list[str], lease: timedelta) -> None:
        if message_ids:
            await self.messages.update_many(
                {"_id": {"$in": message_ids}, "status": Status.STREAMING.value},
                {"$set": {"leaseUntil": now() + lease}},
            )

    async def release(self, message_id: str) -> None:
        """End this responder's lease early, so the reply can be taken over at once."""
        await self.messages.update_one(
            {"_id": message_id, "status": Status.STREAMING.value}, {"$set": {"leaseUntil": now()}}
        )

    async def save_progress(self, batch: Sequence[TextSoFar]) -> None:
        """One round trip for every reply that grew since the last write."""
        if batch:
            await self.messages.bulk_write(
                [
                    UpdateOne(
                        {
                            "_id": item.message_id,
                            "attempt": item.attempt,
                            "status": Status.STREAMING.value,
                        },
                        {"$set": {"message": item.text, "seq": item.seq}},
                    )
                    for item in batch
                ],
                ordered=False,
            )

    async def finish_reply(
        self,
        reply: Message,
        progress: TextSoFar,
        status: Status,
        error: str | None = None,
        stopped: bool = False,
    ) -> Message | None:
        """End an attempt; None if another attempt took the reply over meanwhile."""
        finished = reply.model_copy(
            update={
                "status": status,
                "message": progress.text,
                "seq": progress.seq,
                "error": error,
                "stopped": stopped,
            }
        )
        fields = finished.model_dump(
            include={"status", "message", "seq", "error", "stopped"}, mode="json"
        )
        result = await self.messages.update_one(
            {
                "_id": progress.message_id,
                "attempt": progress.attempt,
                "status": Status.STREAMING.value,
            },
            {"$set": fields},
        )
        return finished if result.modified_count == 1 else None

    async def give_up(self, reply: Message, error: str) -> Message | None:
        """Fail a reply nobody holds for good, keeping whatever text it has.

        Only the attempt the caller saw, and only while it is still free: a reply that was
        taken over meanwhile is left to its new holder.
        """
        result = await self.messages.update_one(
            {"_id": reply.id, "attempt": reply.attempt, **free()},
            {"$set": {"status": Status.FAILED.value, "error": error}},
        )
        if result.modified_count != 1:
            return None
        return await find_message(self.messages, {"_id": reply.id})

    async def abandoned(self, grace: timedelta, limit: int = 100) -> list[Message]:
        """Replies still `streaming` long after their lease ran out: nobody took them over."""
        cursor = self.messages.find(
            {"status": Status.STREAMING.value, "leaseUntil": {"$lt": now() - grace}}
        ).limit(limit)
        return [Message.from_document(document) async for document in cursor]
