"""The conversation documents that batches of turns add to, never bringing one back from a delete.

A conversation document counts its messages and names its latest one. A batch folds its turns
into them per conversation (a `Group`): one bulk insert for the conversations it read as new,
one bulk write for those it read as existing.

A delete first makes the document a tombstone (`documents.tombstone`), then removes the
messages, then the tombstone. A batch storing turns meanwhile finds out, and reports the
conversation gone: its write meets the tombstone (a duplicate `_id`), or has to create a
document it had read as existing, or creates one whose messages the delete already removed.
The caller then withdraws those messages, and a document the batch created is taken back. So a
post racing a delete is either stored before it (and removed with the rest) or refused with
nothing of it left: never a conversation without messages, nor messages without their
conversation.
"""

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from shared.schemas import Message
from shared.store.database import Database
from shared.store.documents import LIVE, conversations_of, messages_of, now

DUPLICATE_KEY = 11000
TITLE_LENGTH = 80
"""A conversation's title until renamed: the start of its first user message, this long."""


@dataclass(slots=True)
class Group:
    """The turns of one batch in one conversation: what they change in its document."""

    owner: str
    conversation_id: str
    title: str
    known: bool
    """The batch read the conversation's document (not a tombstone) before storing its turns."""
    count: int = 0
    last_id: str = ""
    last_order: int = 0
    message_ids: list[str] = field(default_factory=list)

    def add(self, messages: tuple[Message, ...], last_order: int) -> None:
        self.count += len(messages)
        self.message_ids.extend(message.id for message in messages)
        self.last_id, self.last_order = messages[-1].id, last_order

    def document(self, moment: datetime) -> dict[str, Any]:
        """A new conversation's document."""
        return {
            "owner": self.owner,
            "conversationId": self.conversation_id,
            "title": self.title,
            "createdAt": moment,
            "updatedAt": moment,
            "messageCount": self.count,
            "lastMessageId": self.last_id,
            "lastOrder": self.last_order,
        }

    def update(self, moment: datetime) -> dict[str, Any]:
        """The aggregation `$set` that folds this group into an existing document (or a new one).

        Each update is a pipeline so that concurrent batches (other API instances) only move
        `updatedAt` and the latest message forward. Text from users goes in through `$literal`,
        so a leading `$` is never read as a path.
        """
        return {
            "owner": {"$literal": self.owner},
            "conversationId": {"$literal": self.conversation_id},
            "title": {"$ifNull": ["$title", {"$literal": self.title}]},
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


class Summaries:
    def __init__(self, database: Database) -> None:
        self.conversations = conversations_of(database)
        self.messages = messages_of(database)

    async def add(self, groups: dict[str, Group]) -> set[str]:
        """Count each group into its conversation's document, creating those that are new.

        Returns the keys of the conversations deleted meanwhile: those groups count nowhere, and
        their messages are the caller's to withdraw. A conversation another instance created
        meanwhile is added to.
        """
        moment = now()
        fresh = {key: group for key, group in groups.items() if not group.known}
        known = {key: group for key, group in groups.items() if group.known}
        (inserted, raced), (upserted, gone) = await asyncio.gather(
            self._create(fresh, moment), self._update(known, moment)
        )
        late, late_gone = await self._update({key: groups[key] for key in raced}, moment)
        gone |= late_gone | upserted  # read as existing, so deleted since
        created = inserted | upserted | late
        gone |= await self._emptied({key: groups[key] for key in created - gone})
        await self._take_back({key: groups[key] for key in created & gone})
        return gone

    async def _create(
        self, groups: dict[str, Group], moment: datetime
    ) -> tuple[set[str], set[str]]:
        """Insert these conversations' documents; the keys inserted, and those whose `_id` was
        taken (another instance created it, or it is a tombstone)."""
        if not groups:
            return set(), set()
        keys = list(groups)
        documents = [{"_id": key, **groups[key].document(moment)} for key in keys]
        try:
            await self.conversations.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            taken = {keys[item["index"]] for item in _duplicates(error)}
            return set(keys) - taken, taken
        return set(keys), set()

    async def _update(
        self, groups: dict[str, Group], moment: datetime
    ) -> tuple[set[str], set[str]]:
        """Fold the groups into their live documents, creating any that is missing; the keys
        created, and those of tombstones (matched by no live document, yet holding the `_id`)."""
        if not groups:
            return set(), set()
        keys = list(groups)
        updates = [
            UpdateOne({"_id": key, **LIVE}, [{"$set": groups[key].update(moment)}], upsert=True)
            for key in keys
        ]
        try:
            result = await self.conversations.bulk_write(updates, ordered=False)
        except BulkWriteError as error:
            tombstones = {keys[item["index"]] for item in _duplicates(error)}
            return {keys[item["index"]] for item in error.details["upserted"]}, tombstones
        return {keys[index] for index in result.upserted_ids or {}}, set()

    async def _emptied(self, groups: dict[str, Group]) -> set[str]:
        """Of the conversations these groups created, those whose messages a delete removed
        before the document was created (a delete of a conversation that had none yet)."""
        if not groups:
            return set()
        wanted = [message_id for group in groups.values() for message_id in group.message_ids]
        cursor = self.messages.find({"_id": {"$in": wanted}}, {"_id": 1})
        present = {document["_id"] async for document in cursor}
        return {key for key, group in groups.items() if not present.issuperset(group.message_ids)}

    async def _take_back(self, groups: dict[str, Group]) -> None:
        """Uncount the groups from the documents they created, removing those left counting
        nothing (one another batch added to meanwhile stays, with its title)."""
        for key, group in groups.items():
            await self.conversations.update_one(
                {"_id": key, **LIVE}, {"$inc": {"messageCount": -group.count}}
            )
            await self.conversations.delete_one({"_id": key, "messageCount": {"$lte": 0}})


def _duplicates(error: BulkWriteError) -> list[dict[str, Any]]:
    """The write errors of a bulk write, if all are duplicate `_id`s; else raises it again."""
    errors: list[dict[str, Any]] = error.details["writeErrors"]
    if any(item["code"] != DUPLICATE_KEY for item in errors):
        raise error
    return errors


def title_of(text: str) -> str:
    """A conversation's title until renamed: the start of its first user message."""
    return " ".join(text.split())[:TITLE_LENGTH]
