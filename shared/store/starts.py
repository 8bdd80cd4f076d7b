"""The responder's reads and its claim that start replies, batched for bursts.

A burst of jobs costs a few round trips, not a few per job: one read of the replies, one read
of their conversations per user (SecantusDB answers one `$in` over a user's conversations
several times faster than a read per conversation), one bulk claim.
"""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import UpdateOne

from shared.schemas import Message, Status
from shared.store.database import Database
from shared.store.documents import (
    UNFINISHED_VALUES,
    free,
    messages_of,
    now,
    path_to_message,
    with_parents,
)
from shared.store.replies import StoredReply


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


class StartStore:
    def __init__(self, database: Database) -> None:
        self.messages = messages_of(database)

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
