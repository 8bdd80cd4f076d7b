"""The API's writes: new turns, stored by group commit, and the outbox of their jobs.

A turn is a user message and its reply's placeholder. The placeholder stays `published: false`
until the broker confirms its job, so the outbox can publish it later if the broker is away.
Each batch also brings the conversation documents it touches up to date (`summaries`).
"""

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError

from shared.schemas import LOCAL_OWNER, Message
from shared.store.database import Database
from shared.store.documents import (
    DELETING,
    ORDER,
    UNFINISHED_VALUES,
    conversation_key,
    conversations_of,
    messages_of,
    now,
    to_document,
)
from shared.store.summaries import DUPLICATE_KEY, Group, Summaries, title_of

LEGACY_KEY_INDEX = "idempotencyKey_1"
"""The index of keys shared by every user, from before keys were scoped to their owner."""


class NotStored(Exception):
    """Why a turn of a batch was not stored; nothing of it is left."""


class KeyTaken(NotStored):
    """The idempotency key belongs to an earlier turn."""


class ConversationBusy(NotStored):
    """`ifBusy: reject`, and a reply of the conversation is unfinished (`reply_id`)."""

    def __init__(self, reply_id: str) -> None:
        super().__init__(f"a reply of this conversation is still being written: {reply_id}")
        self.reply_id = reply_id


class ConversationGone(NotStored):
    """The conversation was deleted while the turn was being stored."""

    def __init__(self, conversation_id: str) -> None:
        super().__init__(f"conversation {conversation_id} was deleted")


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
    reject_if_busy: bool = False
    """`ifBusy: reject`: not stored behind an unfinished reply of its conversation."""

    @property
    def key(self) -> str:
        """Its conversation document's `_id`."""
        return conversation_key(self.owner, self.reply.conversation_id)

    @property
    def new_messages(self) -> tuple[Message, ...]:
        """What this turn adds to its conversation, in creation order."""
        return (self.reply,) if self.regenerate else (self.user, self.reply)

    @property
    def needs_its_conversation(self) -> bool:
        """It adds to messages stored already (a regenerated reply, a chosen parent), so it
        cannot start its conversation afresh."""
        return self.regenerate or (self.user.parent_id is not None and not self.follows_latest)

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
        self.summaries = Summaries(database)

    async def ensure_indexes(self) -> None:
        await self.messages.create_index(
            [("owner", ASCENDING), ("idempotencyKey", ASCENDING)],
            unique=True,
            partialFilterExpression={"idempotencyKey": {"$exists": True}},
        )
        if LEGACY_KEY_INDEX in await self.messages.index_information():
            await self.messages.drop_index(LEGACY_KEY_INDEX)
        await self.messages.create_index("createdAt", partialFilterExpression={"published": False})

    async def insert_turns(self, turns: list[tuple[Turn, str | None]]) -> dict[int, NotStored]:
        """Store many turns in a few round trips (their conversations read, their messages
        inserted, their conversations' documents written); the turns not stored, by position.

        Each turn is its user message and its reply's placeholder, ordered by creation time. A
        key is scoped to its owner; a reused key fails only its own turn (`KeyTaken`). A turn of
        a conversation being deleted, or deleted while the turn was stored, is refused
        (`ConversationGone`), and so is an `ifBusy: reject` turn stored behind an unfinished
        reply (`ConversationBusy`). The messages of a refused turn are removed again.
        """
        refused, known = await self._follow_latest([turn for turn, _ in turns])
        orders, taken = await self._insert(
            [(index, *turns[index]) for index in range(len(turns)) if index not in refused]
        )
        if taken:
            await self._withdraw([turns[index][0] for index in taken])
        refused |= taken
        stored = {index: turns[index][0] for index in orders if index not in refused}
        refused |= await self._behind_unfinished(stored, orders)
        groups: dict[str, Group] = {}
        for index, turn in stored.items():
            if index not in refused:
                group = groups.setdefault(turn.key, _group(turn, turn.key in known))
                group.add(turn.new_messages, orders[index])
        gone = await self.summaries.add(groups)
        for index, turn in stored.items():
            if turn.key in gone and index not in refused:
                refused[index] = ConversationGone(turn.reply.conversation_id)
        await self._withdraw([turn for index, turn in stored.items() if index in refused])
        return refused

    async def _insert(
        self, turns: list[tuple[int, Turn, str | None]]
    ) -> tuple[dict[int, int], dict[int, NotStored]]:
        """Insert the turns' messages in one round trip; the order of each turn's reply, and the
        turns whose key was taken (their replies are stored: the caller withdraws them)."""
        documents = []
        turn_of: list[int] = []
        orders: dict[int, int] = {}
        for index, turn, key in turns:
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
            orders[index] = ORDER.tick()
            documents.append(to_document(turn.reply, orders[index], reply_fields))
            turn_of.append(index)
        if not documents:
            return orders, {}
        try:
            await self.messages.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            errors = error.details["writeErrors"]
            if any(item["code"] != DUPLICATE_KEY for item in errors):
                raise
            return orders, {turn_of[item["index"]]: KeyTaken() for item in errors}
        return orders, {}

    async def _withdraw(self, turns: list[Turn]) -> None:
        """Remove what these turns stored (a regenerated reply's question stays)."""
        if turns:
            ids = [message.id for turn in turns for message in turn.new_messages]
            await self.messages.delete_many({"_id": {"$in": ids}})

    async def _follow_latest(self, turns: list[Turn]) -> tuple[dict[int, NotStored], set[str]]:
        """Give each turn that follows the latest message that message as its parent, and refuse
        those whose conversation is being deleted, or gone while they need it.

        The latest is the conversation document's, or the reply of an earlier turn of the same
        batch: one read for the whole batch. Also returns the keys of the conversations that
        exist (not being deleted).
        """
        keys = list({turn.key for turn in turns})
        cursor = self.conversations.find({"_id": {"$in": keys}}, {"lastMessageId": 1, DELETING: 1})
        found = {document["_id"]: document async for document in cursor}
        known = {key for key, document in found.items() if DELETING not in document}
        latest = {key: found[key].get("lastMessageId") for key in known}
        refused: dict[int, NotStored] = {}
        for index, turn in enumerate(turns):
            if turn.key not in known and (turn.key in found or turn.needs_its_conversation):
                refused[index] = ConversationGone(turn.reply.conversation_id)
                continue
            if turn.follows_latest:
                turn.user.parent_id = latest.get(turn.key)
            latest[turn.key] = turn.reply.id
        return refused, known

    async def _behind_unfinished(
        self, turns: dict[int, Turn], orders: dict[int, int]
    ) -> dict[int, NotStored]:
        """The `ifBusy: reject` turns stored behind an unfinished reply of their conversation,
        each refused with the earliest such reply.

        Checked once stored, by creation order: of two such posts at once, the later one finds
        the earlier and is refused, whichever instance stored which first.
        """
        rejecting = {index: turn for index, turn in turns.items() if turn.reject_if_busy}

        async def earliest(index: int, turn: Turn) -> dict[str, Any] | None:
            query = {
                "owner": turn.owner,
                "conversationId": turn.reply.conversation_id,
                "order": {"$lt": orders[index]},
                "from": "assistant",
                "status": {"$in": UNFINISHED_VALUES},
            }
            return await self.messages.find_one(query, {"_id": 1}, sort=[("order", ASCENDING)])

        found = await asyncio.gather(*(earliest(index, turn) for index, turn in rejecting.items()))
        return {
            index: ConversationBusy(document["_id"])
            for index, document in zip(rejecting, found, strict=True)
            if document is not None
        }

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

    async def unpublished(self, older_than: timedelta, limit: int) -> list[Turn]:
        """Turns whose job the broker has not confirmed, oldest first: the outbox."""
        cursor = (
            self.messages.find(_unpublished(older_than)).sort("createdAt", ASCENDING).limit(limit)
        )
        turns = []
        async for reply in cursor:
            user = await self.messages.find_one({"_id": reply["userMessageId"]})
            if user is not None:
                turns.append(Turn.from_documents(user, reply))
        return turns

    async def count_unpublished(self, older_than: timedelta) -> int:
        """How many replies the outbox holds, all of them (the partial index counts them)."""
        return await self.messages.count_documents(_unpublished(older_than))


def _unpublished(older_than: timedelta) -> dict[str, Any]:
    return {"published": False, "createdAt": {"$lt": now() - older_than}}


def _group(turn: Turn, known: bool) -> Group:
    return Group(turn.owner, turn.reply.conversation_id, title_of(turn.user.message), known)
