"""Bring data stored by earlier versions up to date at start-up, so an upgrade needs no manual step.

Messages stored before users existed are given the open mode's user, so every query matches
an owner by equality (SecantusDB answers `owner: {$in: [..., null]}` with a collection scan: a
second per history read under a burst). Conversations stored before conversation documents
existed get one, summarised from their messages. (Messages stored before trees need nothing:
they read as one chain, see `documents.with_parents`.)
"""

import logging
from datetime import datetime
from typing import Any

from pymongo import UpdateOne

from shared.schemas import LOCAL_OWNER
from shared.store.database import Database
from shared.store.documents import (
    conversation_key,
    conversations_of,
    messages_of,
)
from shared.store.summaries import title_of

log = logging.getLogger(__name__)

SUMMARISE: list[dict[str, Any]] = [
    {"$sort": {"conversationId": 1, "order": 1}},
    {
        "$group": {
            "_id": "$conversationId",
            "owner": {"$first": "$owner"},
            "firstText": {"$first": "$message"},
            "firstAt": {"$first": "$timestamp"},
            "lastAt": {"$last": "$timestamp"},
            "lastMessageId": {"$last": "$_id"},
            "lastOrder": {"$last": "$order"},
            "messageCount": {"$sum": 1},
        }
    },
]


async def own_old_messages(database: Database) -> None:
    """Messages without an owner are the open mode's user's: say so, once."""
    result = await messages_of(database).update_many(
        {"owner": None}, {"$set": {"owner": LOCAL_OWNER}}
    )
    if result.modified_count:
        log.info("gave %d messages stored before users their owner", result.modified_count)


async def upgrade(database: Database) -> None:
    await own_old_messages(database)
    await summarise_old_conversations(database)


async def summarise_old_conversations(database: Database) -> None:
    """Create the missing conversation documents, once: only while there are none at all."""
    conversations, messages = conversations_of(database), messages_of(database)
    if await conversations.find_one({}) is not None or await messages.find_one({}) is None:
        return
    updates = [
        UpdateOne(
            {"_id": conversation_key(row["owner"], row["_id"])},
            {"$setOnInsert": _summary(row)},
            upsert=True,
        )
        async for row in await messages.aggregate(SUMMARISE)
    ]
    if updates:
        await conversations.bulk_write(updates, ordered=False)
        log.info("created the documents of %d conversations stored before them", len(updates))


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "owner": row["owner"],
        "conversationId": row["_id"],
        "title": title_of(row["firstText"]),
        "createdAt": _moment(row["firstAt"]),
        "updatedAt": _moment(row["lastAt"]),
        "messageCount": row["messageCount"],
        "lastMessageId": row["lastMessageId"],
        "lastOrder": row["lastOrder"],
    }


def _moment(timestamp: str) -> datetime:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
