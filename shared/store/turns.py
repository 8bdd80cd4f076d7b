"""The API's writes: new turns, stored by group commit, and the outbox of their jobs.

A turn is a user message and its reply's placeholder. The placeholder stays `published: false`
until the broker confirms its job, so the outbox can publish it later if the broker is away.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from shared.schemas import Message
from shared.store.documents import LOCAL_OWNER, ORDER, messages_of, now, to_document

DUPLICATE_KEY = 11000


LEGACY_KEY_INDEX = "idempotencyKey_1"
"""The index of keys shared by every user, from before keys were scoped to their owner."""


@dataclass(slots=True)
class Turn:
    """A user message and the reply it asks for, stored together.

    `request_hash` fingerprints the request that asked for it: an idempotency key replays
    this turn only to the same request.
    """

    user: Message
    reply: Message
    owner: str = LOCAL_OWNER
    request_hash: str | None = None

    @classmethod
    def from_documents(cls, user: dict[str, Any], reply: dict[str, Any]) -> "Turn":
        return cls(
            Message.from_document(user),
            Message.from_document(reply),
            user.get("owner", LOCAL_OWNER),
            user.get("requestHash"),
        )


class TurnStore:
    def __init__(self, database: AsyncDatabase) -> None:
        self.messages = messages_of(database)

    async def ensure_indexes(self) -> None:
        await self.messages.create_index(
            [("owner", ASCENDING), ("idempotencyKey", ASCENDING)],
            unique=True,
            partialFilterExpression={"idempotencyKey": {"$exists": True}},
        )
        if LEGACY_KEY_INDEX in await self.messages.index_information():
            await self.messages.drop_index(LEGACY_KEY_INDEX)
        await self.messages.create_index("createdAt", partialFilterExpression={"published": False})

    async def insert_turns(self, turns: list[tuple[Turn, str | None]]) -> set[int]:
        """Store many turns in one round trip; returns the positions whose key was taken.

        Each turn is its user message and its reply's placeholder, ordered by creation time.
        A key is scoped to its owner. A reused key fails only its own user message; the reply
        stored beside it is removed again.
        """
        documents = []
        for turn, key in turns:
            user_fields: dict[str, Any] = {"owner": turn.owner, "replyId": turn.reply.id}
            if key is not None:
                user_fields["idempotencyKey"] = key
                user_fields["requestHash"] = turn.request_hash
            reply_fields = {
                "owner": turn.owner,
                "userMessageId": turn.user.id,
                "published": False,
                "createdAt": now(),
            }
            documents.append(to_document(turn.user, ORDER.tick(), user_fields))
            documents.append(to_document(turn.reply, ORDER.tick(), reply_fields))
        try:
            await self.messages.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details["writeErrors"]
            if any(item["code"] != DUPLICATE_KEY for item in errors):
                raise
            taken = {item["index"] // 2 for item in errors}
            await self.messages.delete_many(
                {"_id": {"$in": [turns[index][0].reply.id for index in taken]}}
            )
            return taken
        return set()

    async def mark_published(self, reply_ids: list[str]) -> None:
        await self.messages.update_many({"_id": {"$in": reply_ids}}, {"$set": {"published": True}})

    async def find_turn(self, owner: str, idempotency_key: str) -> Turn | None:
        """The turn this owner stored with this key, with the fingerprint of its request."""
        user = await self.messages.find_one({"owner": owner, "idempotencyKey": idempotency_key})
        if user is None:
            return None
        reply = await self.messages.find_one({"_id": user["replyId"]})
        if reply is None:
            return None
        return Turn.from_documents(user, reply)

    async def unpublished(self, older_than: timedelta, limit: int = 100) -> list[Turn]:
        """Turns whose job the broker has not confirmed, oldest first: the outbox."""
        cursor = (
            self.messages.find({"published": False, "createdAt": {"$lt": now() - older_than}})
            .sort("createdAt", ASCENDING)
            .limit(limit)
        )
        turns = []
        async for reply in cursor:
            user = await self.messages.find_one({"_id": reply["userMessageId"]})
            if user is not None:
                turns.append(Turn.from_documents(user, reply))
        return turns
