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
    UNFINISHED_VALUES,
    find_message,
    free,
    messages_of,
    now,
    owned_by,
    with_parents,
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

    async def get_reply(self, message_id: str) -> StoredReply | None:
        document = await self.messages.find_one({"_id": message_id, "from": "assistant"})
        return None if document is None else StoredReply.from_document(document)

    async def path_to(self, reply: StoredReply) -> list[Message]:
        """The model's context for `reply`: the path from the conversation's first message to
        the user message it answers, that one last. Other branches are not on it."""
        return follow_parents(reply, await self._earlier(reply))

    async def path_if_next(self, reply: StoredReply) -> list[Message] | None:
        """`path_to(reply)`, or None while an earlier reply of the conversation (on any branch)
        is unfinished: replies are written one at a time, in creation order. One read."""
        earlier = await self._earlier(reply)
        if any(
            document["from"] == "assistant" and document["status"] in UNFINISHED_VALUES
            for document in earlier
        ):
            return None
        return follow_parents(reply, earlier)

    async def _earlier(self, reply: StoredReply) -> list[dict[str, Any]]:
        """Every message of the conversation created before `reply`, oldest first."""
        before = {
            **owned_by(reply.message.owner),
            "conversationId": reply.message.conversation_id,
            "order": {"$lt": reply.order},
        }
        cursor = self.messages.find(before).sort("order", ASCENDING)
        return with_parents([document async for document in cursor])

    async def claim_reply(
        self, reply: StoredReply, lease: timedelta, prompt_tokens: int = 0, model: str | None = None
    ) -> StoredReply | None:
        """Start the next attempt at a reply nobody holds, from an empty text; None if held.

        `prompt_tokens` (the context's size) is kept for a usage estimate should the attempt
        end without the provider's count; `model` is the model asked.
        """
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
                    "promptTokens": prompt_tokens,
                    **({"model": model} if model else {}),
                },
                "$unset": {"error": "", "reasoning": "", "usage": "", "finishReason": ""},
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
                "reasoning": None,
                "usage": None,
                "finish_reason": None,
                "model": model or reply.message.model,
            }
        )
        return StoredReply(
            started, reply.order, reply.stop_requested, reply.user_message_id, prompt_tokens
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


def follow_parents(reply: StoredReply, earlier: list[dict[str, Any]]) -> list[Message]:
    """Follow parents from the reply's user message back to the first message."""
    by_id = {document["_id"]: document for document in earlier}
    path: list[dict[str, Any]] = []
    step: str | None = reply.user_message_id
    while step is not None and step in by_id and len(path) < len(earlier):
        path.append(by_id[step])
        step = by_id[step]["parentId"]
    return [Message.from_document(document) for document in reversed(path)]


def _progress_fields(item: TextSoFar) -> dict[str, Any]:
    fields: dict[str, Any] = {"message": item.text, "seq": item.seq}
    if item.reasoning:
        fields["reasoning"] = item.reasoning
    return fields
