"""The responder's reads and writes of the replies it writes.

A reply carries a lease: the responder writing it renews it, so a reply whose responder
vanished can be taken over (by a redelivered job) or, if nobody does, ended as failed.
"""

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
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
    path_to_message,
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


@dataclass(frozen=True, slots=True)
class Claim:
    """A reply to start, with what its attempt sends: the context's size (kept for a usage
    estimate should the attempt end without the provider's count) and the model asked."""

    reply: StoredReply
    prompt_tokens: int
    model: str | None

    def started(self) -> StoredReply:
        message = self.reply.message.model_copy(
            update={
                "status": Status.STREAMING,
                "message": "",
                "seq": 0,
                "attempt": self.reply.message.attempt + 1,
                "error": None,
                "reasoning": None,
                "usage": None,
                "finish_reason": None,
                "model": self.model or self.reply.message.model,
            }
        )
        reply = self.reply
        return StoredReply(
            message, reply.order, reply.stop_requested, reply.user_message_id, self.prompt_tokens
        )


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

    async def get_replies(self, message_ids: list[str]) -> list[StoredReply | None]:
        """The replies of `message_ids`, in order (None where there is none): one round trip."""
        cursor = self.messages.find({"_id": {"$in": message_ids}, "from": "assistant"})
        found = {document["_id"]: document async for document in cursor}
        return [
            StoredReply.from_document(found[message_id]) if message_id in found else None
            for message_id in message_ids
        ]

    async def paths_if_next(self, replies: list[StoredReply]) -> list[list[Message] | None]:
        """Each reply's context for the model: the path from its conversation's first message
        to the user message it answers, that one last (other branches are not on it). None for
        a reply while an earlier reply of its conversation (on any branch) is unfinished:
        replies are written one at a time, in creation order.

        One read per owner among `replies`: SecantusDB answers one `$in` over a user's
        conversations several times faster than a read per conversation.
        """
        wanted: dict[str, set[str]] = {}
        for reply in replies:
            wanted.setdefault(reply.message.owner, set()).add(reply.message.conversation_id)
        found = await asyncio.gather(
            *(self._conversations(owner, ids) for owner, ids in wanted.items())
        )
        conversations = {key: documents for each in found for key, documents in each.items()}
        return [_path_if_next(reply, conversations.get(_key(reply), [])) for reply in replies]

    async def _conversations(
        self, owner: str, conversation_ids: set[str]
    ) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """Every message of these conversations, each conversation's in creation order."""
        query = {"owner": owner, "conversationId": {"$in": sorted(conversation_ids)}}
        conversations: dict[tuple[str, str], list[dict[str, Any]]] = {}
        async for document in self.messages.find(query):
            conversations.setdefault((owner, document["conversationId"]), []).append(document)
        for documents in conversations.values():
            documents.sort(key=lambda document: int(document["order"]))
            with_parents(documents)
        return conversations

    async def claim_replies(
        self, claims: list[Claim], lease: timedelta
    ) -> list[StoredReply | None]:
        """Start the next attempt at each reply nobody holds, from an empty text (None for one
        held meanwhile): one round trip, a second only if another responder took some first."""
        holder = uuid.uuid4().hex
        lease_until = now() + lease
        result = await self.messages.bulk_write(
            [_claim_update(claim, holder, lease_until) for claim in claims], ordered=False
        )
        ids = [claim.reply.message.id for claim in claims]
        if result.modified_count == len(claims):
            won = set(ids)
        else:
            cursor = self.messages.find({"_id": {"$in": ids}, "holder": holder}, {"_id": 1})
            won = {document["_id"] async for document in cursor}
        return [claim.started() if claim.reply.message.id in won else None for claim in claims]

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


def _key(reply: StoredReply) -> tuple[str, str]:
    return (reply.message.owner, reply.message.conversation_id)


def _path_if_next(reply: StoredReply, conversation: list[dict[str, Any]]) -> list[Message] | None:
    earlier = [document for document in conversation if document["order"] < reply.order]
    if any(
        document["from"] == "assistant" and document["status"] in UNFINISHED_VALUES
        for document in earlier
    ):
        return None
    return path_to_message(reply.user_message_id, earlier)


def _claim_update(claim: Claim, holder: str, lease_until: datetime) -> UpdateOne:
    message = claim.reply.message
    return UpdateOne(
        {"_id": message.id, "attempt": message.attempt, **free()},
        {
            "$set": {
                "status": Status.STREAMING.value,
                "message": "",
                "seq": 0,
                "attempt": message.attempt + 1,
                "leaseUntil": lease_until,
                "holder": holder,
                "promptTokens": claim.prompt_tokens,
                **({"model": claim.model} if claim.model else {}),
            },
            "$unset": {"error": "", "reasoning": "", "usage": "", "finishReason": ""},
        },
    )
