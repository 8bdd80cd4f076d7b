"""The API's writes: new turns, stored by group commit, and the outbox of their jobs.

A turn is a user message and its reply's placeholder. The placeholder stays `published: false`
until the broker confirms its job, so the outbox can publish it later if the broker is away.
Each batch also brings the conversation documents it touches up to date, in one bulk write.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from shared.schemas import Message
from shared.store.documents import (
    LOCAL_OWNER,
    ORDER,
    conversation_key,
    conversations_of,
    messages_of,
    now,
    to_document,
)

DUPLICATE_KEY = 11000
TITLE_LENGTH = 80
"""A conversation's title until renamed: the start of its first user message, this long."""


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
    follows_latest: bool = False
    """The user message follows the conversation's latest message, found when it is stored."""
    regenerate: bool = False
    """The user message is stored already: only a new reply to it (a sibling of an earlier one)."""

    @property
    def new_messages(self) -> tuple[Message, ...]:
        """What this turn adds to its conversation, in creation order."""
        return (self.reply,) if self.regenerate else (self.user, self.reply)

    @classmethod
    def from_documents(cls, user: dict[str, Any], reply: dict[str, Any]) -> "Turn":
        return cls(
            Message.from_document(user),
            Message.from_document(reply),
            user.get("owner", LOCAL_OWNER),
            user.get("requestHash"),
            regenerate=bool(reply.get("regenerate")),
        )


class TurnStore:
    def __init__(self, database: AsyncDatabase) -> None:
        self.messages = messages_of(database)
        self.conversations = conversations_of(database)

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
        """Store many turns in two round trips (messages, then the conversations they add to).

        Returns the positions whose key was taken.

        Each turn is its user message and its reply's placeholder, ordered by creation time.
        A key is scoped to its owner. A reused key fails only its own user message; the reply
        stored beside it is removed again.
        """
        await self._find_parents([turn for turn, _ in turns])
        documents = []
        turn_of: list[int] = []
        orders = []
        for index, (turn, key) in enumerate(turns):
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
            if turn.regenerate:
                reply_fields["regenerate"] = True
            if not turn.regenerate:
                documents.append(to_document(turn.user, ORDER.tick(), user_fields))
                turn_of.append(index)
            orders.append(ORDER.tick())
            documents.append(to_document(turn.reply, orders[-1], reply_fields))
            turn_of.append(index)
        taken: set[int] = set()
        try:
            await self.messages.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details["writeErrors"]
            if any(item["code"] != DUPLICATE_KEY for item in errors):
                raise
            taken = {turn_of[item["index"]] for item in errors}
            await self.messages.delete_many(
                {"_id": {"$in": [turns[index][0].reply.id for index in taken]}}
            )
        stored = [
            (turn, order)
            for index, ((turn, _), order) in enumerate(zip(turns, orders, strict=True))
            if index not in taken
        ]
        await self._summarise(stored)
        return taken

    async def _summarise(self, stored: list[tuple[Turn, int]]) -> None:
        """Count the new messages into their conversations' documents, creating those that are new.

        One update per conversation, written as a pipeline so that concurrent batches (other
        API instances) can only move `updatedAt` and the latest message forward.
        """
        latest: dict[str, tuple[Turn, int, Turn, int]] = {}
        for turn, order in stored:
            key = conversation_key(turn.owner, turn.reply.conversation_id)
            first, count, _, _ = latest.get(key, (turn, 0, turn, order))
            latest[key] = (first, count + len(turn.new_messages), turn, order)
        moment = now()
        updates = [
            UpdateOne(
                {"_id": key},
                [{"$set": _summary(first, count, moment, last.reply.id, order)}],
                upsert=True,
            )
            for key, (first, count, last, order) in latest.items()
        ]
        if updates:
            await self.conversations.bulk_write(updates, ordered=False)

    async def _find_parents(self, turns: list[Turn]) -> None:
        """Give each turn that follows the latest message that message as its parent.

        The latest is the conversation document's, or the reply of an earlier turn of the same
        batch: one read for the whole batch, and none if no turn needs it.
        """
        if not any(turn.follows_latest for turn in turns):
            return
        keys = list({conversation_key(turn.owner, turn.reply.conversation_id) for turn in turns})
        cursor = self.conversations.find({"_id": {"$in": keys}}, {"lastMessageId": 1})
        latest = {document["_id"]: document.get("lastMessageId") async for document in cursor}
        for turn in turns:
            key = conversation_key(turn.owner, turn.reply.conversation_id)
            if turn.follows_latest:
                turn.user.parent_id = latest.get(key)
            latest[key] = turn.reply.id

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


def _summary(first: Turn, count: int, moment: datetime, last_id: str, order: int) -> dict[str, Any]:
    """The aggregation `$set` that folds `count` new messages, the last `last_id`, into a summary.

    Text from users goes in through `$literal`, so a leading `$` is never read as a field path.
    """
    title = " ".join(first.user.message.split())[:TITLE_LENGTH]
    return {
        "owner": {"$literal": first.owner},
        "conversationId": {"$literal": first.reply.conversation_id},
        "title": {"$ifNull": ["$title", {"$literal": title}]},
        "createdAt": {"$ifNull": ["$createdAt", moment]},
        "updatedAt": {"$max": ["$updatedAt", moment]},
        "messageCount": {"$add": [{"$ifNull": ["$messageCount", 0]}, count]},
        "lastMessageId": {
            "$cond": [
                {"$gt": [order, {"$ifNull": ["$lastOrder", 0]}]},
                {"$literal": last_id},
                "$lastMessageId",
            ]
        },
        "lastOrder": {"$max": ["$lastOrder", order]},
    }
