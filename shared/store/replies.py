"""The responder's reads and writes of the replies it writes.

A reply carries a lease: the responder writing it renews it, so a reply whose responder
vanished can be taken over (by a redelivered job) or, if nobody does, ended as failed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from pymongo import ASCENDING, UpdateOne

from shared.schemas import Message, Status, Usage
from shared.store.database import Database
from shared.store.documents import (
    find_message,
    free,
    messages_of,
    now,
)


class TextSoFar(Protocol):
    """What the responder hands over to be saved: one attempt's text, reasoning and delta count."""

    @property
    def message_id(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def reasoning(self) -> str: ...
    @property
    def seq(self) -> int: ...


@dataclass(slots=True)
class StoredReply:
    """A reply with what the responder needs beyond the wire message."""

    message: Message
    order: int
    stop_requested: bool
    user_message_id: str
    """The user message it answers: its parent, also for replies stored before trees."""
    prompt_tokens: int = 0
    """The size of the context the current attempt sent, for a usage estimate by whoever ends it."""

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "StoredReply":
        return cls(
            Message.from_document(document),
            int(document["order"]),
            bool(document.get("stopRequested")),
            document.get("parentId") or document["userMessageId"],
            int(document.get("promptTokens", 0)),
        )


FINISH_FIELDS = {
    "status",
    "message",
    "reasoning",
    "seq",
    "error",
    "stopped",
    "usage",
    "finish_reason",
    "model",
}


@dataclass(frozen=True, slots=True)
class Ending:
    """How a reply ended besides its text: stored on every finished reply."""

    finish_reason: str
    usage: Usage
    model: str | None

    def fields(self) -> dict[str, Any]:
        """The document fields, as the wire names them."""
        fields: dict[str, Any] = {
            "finishReason": self.finish_reason,
            "usage": self.usage.model_dump(mode="json"),
        }
        if self.model:
            fields["model"] = self.model
        return fields


class ReplyStore:
    def __init__(self, database: Database) -> None:
        self.messages = messages_of(database)

    async def ensure_indexes(self) -> None:
        await self.messages.create_index(
            [("owner", ASCENDING), ("conversationId", ASCENDING), ("order", ASCENDING)]
        )
        await self.messages.create_index(
            "leaseUntil", partialFilterExpression={"status": Status.STREAMING.value}
        )

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
                        {"$set": _progress_fields(item)},
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
        ending: Ending,
        error: str | None = None,
        stopped: bool = False,
    ) -> Message | None:
        """End an attempt; None if another attempt took the reply over meanwhile."""
        finished = reply.model_copy(
            update={
                "status": status,
                "message": progress.text,
                "reasoning": progress.reasoning or None,
                "seq": progress.seq,
                "error": error,
                "stopped": stopped,
                "usage": ending.usage,
                "finish_reason": ending.finish_reason,
                "model": ending.model or reply.model,
            }
        )
        fields = finished.model_dump(include=FINISH_FIELDS, mode="json", exclude_none=True)
        result = await self.messages.update_one(
            {
                "_id": progress.message_id,
                "attempt": progress.attempt,
                "status": Status.STREAMING.value,
            },
            {"$set": fields},
        )
        return finished if result.modified_count == 1 else None

    async def give_up(self, reply: Message, error: str, ending: Ending) -> Message | None:
        """Fail a reply nobody holds for good, keeping whatever text it has.

        Only the attempt the caller saw, and only while it is still free: a reply that was
        taken over meanwhile is left to its new holder.
        """
        fields = {"status": Status.FAILED.value, "error": error, **ending.fields()}
        result = await self.messages.update_one(
            {"_id": reply.id, "attempt": reply.attempt, **free()}, {"$set": fields}
        )
        if result.modified_count != 1:
            return None
        return await find_message(self.messages, {"_id": reply.id})

    async def abandoned(self, grace: timedelta, limit: int = 100) -> list[StoredReply]:
        """Replies still `streaming` long after their lease ran out: nobody took them over."""
        cursor = self.messages.find(
            {"status": Status.STREAMING.value, "leaseUntil": {"$lt": now() - grace}}
        ).limit(limit)
        return [StoredReply.from_document(document) async for document in cursor]


def _progress_fields(item: TextSoFar) -> dict[str, Any]:
    fields: dict[str, Any] = {"message": item.text, "seq": item.seq}
    if item.reasoning:
        fields["reasoning"] = item.reasoning
    return fields
