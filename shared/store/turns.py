"""The API's writes: new turns, stored by group commit, and the outbox of their jobs.

A turn is a user message and its reply's placeholder. The placeholder stays `published: false`
until the broker confirms its job, so the outbox can publish it later if the broker is away.
Each batch also brings the conversation documents it touches up to date, in one bulk write.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from shared.schemas import LOCAL_OWNER, Message
from shared.store.database import Database
from shared.store.documents import (
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
    def __init__(self, database: Database) -> None:
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
        existing = await self._find_parents([turn for turn, _ in turns])
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
        await self._summarise(stored, existing)
        return taken

    async def _summarise(self, stored: list[tuple[Turn, int]], existing: set[str]) -> None:
        """Count the new messages into their conversations' documents, creating those that are new.

        New conversations are inserted in one bulk insert (a burst of new conversations costs
        about what its messages do); known ones are updated in one bulk write, each update a
        pipeline so that concurrent batches (other API instances) only move `updatedAt` and the
        latest message forward. A conversation another instance created meanwhile is updated.
        """
        groups: dict[str, _Group] = {}
        for turn, order in stored:
            key = conversation_key(turn.owner, turn.reply.conversation_id)
            groups.setdefault(key, _Group(turn)).add(turn, order)
        moment = now()
        fresh = [key for key in groups if key not in existing]
        known = [key for key in groups if key in existing]
        raced, _ = await asyncio.gather(
            self._create({key: groups[key] for key in fresh}, moment),
            self._update({key: groups[key] for key in known}, moment),
        )
        await self._update({key: groups[key] for key in raced}, moment)

    async def _create(self, groups: dict[str, "_Group"], moment: datetime) -> list[str]:
        """Insert these conversations' documents; the keys that turned out to exist already."""
        if not groups:
            return []
        keys = list(groups)
        documents = [{"_id": key, **groups[key].document(moment)} for key in keys]
        try:
            await self.conversations.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details["writeErrors"]
            if any(item["code"] != DUPLICATE_KEY for item in errors):
                raise
            return [keys[item["index"]] for item in errors]
        return []

    async def _update(self, groups: dict[str, "_Group"], moment: datetime) -> None:
        if groups:
            updates = [
                UpdateOne({"_id": key}, [{"$set": group.update(moment)}], upsert=True)
                for key, group in groups.items()
            ]
            await self.conversations.bulk_write(updates, ordered=False)

    async def _find_parents(self, turns: list[Turn]) -> set[str]:
        """Give each turn that follows the latest message that message as its parent.

        The latest is the conversation document's, or the reply of an earlier turn of the same
        batch: one read for the whole batch. Returns the keys of the conversations that exist.
        """
        keys = list({conversation_key(turn.owner, turn.reply.conversation_id) for turn in turns})
        cursor = self.conversations.find({"_id": {"$in": keys}}, {"lastMessageId": 1})
        latest = {document["_id"]: document.get("lastMessageId") async for document in cursor}
        existing = set(latest)
        for turn in turns:
            key = conversation_key(turn.owner, turn.reply.conversation_id)
            if turn.follows_latest:
                turn.user.parent_id = latest.get(key)
            latest[key] = turn.reply.id
        return existing

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


@dataclass(slots=True)
class _Group:
    """The turns of one batch in one conversation: what they change in its document."""

    first: Turn
    count: int = 0
    last_id: str = ""
    last_order: int = 0

    def add(self, turn: Turn, order: int) -> None:
        self.count += len(turn.new_messages)
        self.last_id, self.last_order = turn.reply.id, order

    def document(self, moment: datetime) -> dict[str, Any]:
        """A new conversation's document."""
        return {
            "owner": self.first.owner,
            "conversationId": self.first.reply.conversation_id,
            "title": title_of(self.first.user.message),
            "createdAt": moment,
            "updatedAt": moment,
            "messageCount": self.count,
            "lastMessageId": self.last_id,
            "lastOrder": self.last_order,
        }

    def update(self, moment: datetime) -> dict[str, Any]:
        """The aggregation `$set` that folds this group into an existing document (or a new one).

        Text from users goes in through `$literal`, so a leading `$` is never read as a path.
        """
        return {
            "owner": {"$literal": self.first.owner},
            "conversationId": {"$literal": self.first.reply.conversation_id},
            "title": {"$ifNull": ["$title", {"$literal": title_of(self.first.user.message)}]},
            "createdAt": {"$ifNull": ["$createdAt", moment]},
            "updatedAt": {"$max": ["$updatedAt", moment]},
            "messageCount": {"$add": [{"$ifNull": ["$messageCount", 0]}, self.count]},
            "lastMessageId": {
                "$cond": [
                    {"$gt": [self.last_order, {"$ifNull": ["$lastOrder", 0]}]},
                    {"$literal": self.last_id},
                    "$lastMessageId",
                ]
            },
            "lastOrder": {"$max": ["$lastOrder", self.last_order]},
        }


def title_of(text: str) -> str:
    """A conversation's title until renamed: the start of its first user message."""
    return " ".join(text.split())[:TITLE_LENGTH]
