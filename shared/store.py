"""MongoDB storage of conversations and messages, through PyMongo's native asyncio API.

Replies carry a lease: the responder writing one renews it, so a reply whose responder
vanished can be taken over (by a redelivered job) or, if nobody does, ended as failed.
"""

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConfigurationError, PyMongoError

from shared.schemas import Message, Status, utc_timestamp
from shared.startup import DependencyUnavailable

UNFINISHED = [Status.CREATED.value, Status.STREAMING.value]
DUPLICATE_KEY = 11000


class CreationOrder:
    """Nanosecond creation times, strictly rising within a process.

    Messages sort by this within a conversation. Across API instances it is the order of the
    hosts' clocks, which holds for any client that waits for one answer before posting again.
    """

    def __init__(self) -> None:
        self.last = 0

    def tick(self) -> int:
        self.last = max(time.time_ns(), self.last + 1)
        return self.last


ORDER = CreationOrder()


def free() -> dict[str, Any]:
    """A reply nobody holds: not started, or `streaming` under a lease that ran out.

    Written without `$or`, and matched by `_id` with `update_one` rather than
    `find_one_and_update`: SecantusDB scans the whole collection for either.
    """
    return {"status": {"$in": UNFINISHED}, "leaseUntil": {"$not": {"$gte": now()}}}


def new_id() -> str:
    """Short, unique and time-ordered: ids travel in every delta frame."""
    return str(ObjectId())


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class Progress:
    """A reply's text so far, as the responder hands it to the periodic writer."""

    message_id: str
    attempt: int
    text: str
    seq: int


@dataclass(slots=True)
class StoredReply:
    """A reply with what the responder needs beyond the wire message."""

    message: Message
    order: int
    stop_requested: bool

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> "StoredReply":
        return cls(
            Message.from_document(document),
            int(document["order"]),
            bool(document.get("stopRequested")),
        )


@dataclass(slots=True)
class Turn:
    """A user message and the reply it asks for, stored together."""

    user: Message
    reply: Message


SELECTION_TIMEOUT_MS = 3000
"""How long an operation waits for an unreachable MongoDB before failing (a 503 to users)."""


async def connect(url: str, database: str, timeout: float) -> AsyncDatabase:
    try:
        client: AsyncMongoClient = AsyncMongoClient(
            url, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS, tz_aware=True
        )
    except ConfigurationError as error:
        raise DependencyUnavailable("MONGODB_URL", url, error) from error
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await client.admin.command("ping")
            return client[database]
        except (PyMongoError, TimeoutError) as error:
            if time.monotonic() >= deadline:
                await client.close()
                reason = f"no answer within {timeout:g}s"
                raise DependencyUnavailable("MONGODB_URL", url, reason) from error


class MessageStore:
    def __init__(self, database: AsyncDatabase) -> None:
        self.database = database
        self.messages = database["messages"]

    async def ensure_indexes(self) -> None:
        await self.messages.create_index([("conversationId", ASCENDING), ("order", ASCENDING)])
        await self.messages.create_index(
            "idempotencyKey",
            unique=True,
            partialFilterExpression={"idempotencyKey": {"$exists": True}},
        )
        await self.messages.create_index(
            "leaseUntil", partialFilterExpression={"status": Status.STREAMING.value}
        )
        await self.messages.create_index("createdAt", partialFilterExpression={"published": False})

    async def ping(self) -> None:
        await self.database.command("ping")

    @staticmethod
    def new_turn(conversation_id: str, text: str) -> Turn:
        timestamp = utc_timestamp()
        user = Message(
            id=new_id(),
            conversationId=conversation_id,
            sender="user",
            message=text,
            status=Status.COMPLETED,
            timestamp=timestamp,
            seq=0,
        )
        reply = user.model_copy(
            update={"id": new_id(), "sender": "assistant", "message": "", "status": Status.CREATED}
        )
        return Turn(user, reply)

    async def insert_turns(self, turns: list[tuple[Turn, str | None]]) -> set[int]:
        """Store many turns in one round trip; returns the positions whose key was taken.

        Each turn is its user message and its reply's placeholder, ordered by creation time.
        The placeholder stays `published: false` until the broker confirms its job, so the
        outbox can publish it later if the broker is away now. A reused idempotency key fails
        only its own user message; the reply stored beside it is removed again.
        """
        documents = []
        for turn, key in turns:
            user_fields: dict[str, Any] = {"replyId": turn.reply.id}
            if key is not None:
                user_fields["idempotencyKey"] = key
            reply_fields = {"userMessageId": turn.user.id, "published": False, "createdAt": now()}
            documents.append(_document(turn.user, ORDER.tick(), user_fields))
            documents.append(_document(turn.reply, ORDER.tick(), reply_fields))
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

    async def find_turn(self, idempotency_key: str) -> Turn | None:
        user = await self.messages.find_one({"idempotencyKey": idempotency_key})
        if user is None:
            return None
        reply = await self.messages.find_one({"_id": user["replyId"]})
        if reply is None:
            return None
        return Turn(Message.from_document(user), Message.from_document(reply))

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
                turns.append(Turn(Message.from_document(user), Message.from_document(reply)))
        return turns

    async def conversation_exists(self, conversation_id: str) -> bool:
        existing = {"conversationId": conversation_id}
        return await self.messages.count_documents(existing, limit=1) > 0

    async def list_messages(self, conversation_id: str) -> list[Message]:
        cursor = self.messages.find({"conversationId": conversation_id}).sort("order", ASCENDING)
        return [Message.from_document(document) async for document in cursor]

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        document = await self.messages.find_one(
            {"_id": message_id, "conversationId": conversation_id}
        )
        return None if document is None else Message.from_document(document)

    async def get_reply(self, message_id: str) -> "StoredReply | None":
        document = await self.messages.find_one({"_id": message_id, "from": "assistant"})
        return None if document is None else StoredReply.from_document(document)

    async def has_unfinished_before(self, reply: "StoredReply") -> bool:
        """Whether an earlier reply in the conversation still has to finish first."""
        earlier = {
            "conversationId": reply.message.conversation_id,
            "from": "assistant",
            "order": {"$lt": reply.order},
            "status": {"$in": UNFINISHED},
        }
        return await self.messages.count_documents(earlier, limit=1) > 0

    async def history_before(self, reply: "StoredReply", limit: int) -> list[Message]:
        """The last `limit` messages before `reply`, oldest first."""
        before = {"conversationId": reply.message.conversation_id, "order": {"$lt": reply.order}}
        cursor = self.messages.find(before).sort("order", -1).limit(limit)
        newest_first = [Message.from_document(document) async for document in cursor]
        return newest_first[::-1]

    async def claim_reply(self, reply: "StoredReply", lease: timedelta) -> "StoredReply | None":
        """Start the next attempt at a reply nobody holds, from an empty text; None if held."""
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
                },
                "$unset": {"error": ""},
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
            }
        )
        return StoredReply(started, reply.order, reply.stop_requested)

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

    async def save_progress(self, batch: list[Progress]) -> None:
        """One round trip for every reply that grew since the last write."""
        if batch:
            await self.messages.bulk_write(
                [
                    UpdateOne(
                        {"_id": item.message_id, "attempt": item.attempt, "status": "streaming"},
                        {"$set": {"message": item.text, "seq": item.seq}},
                    )
                    for item in batch
                ],
                ordered=False,
            )

    async def finish_reply(
        self,
        reply: Message,
        progress: Progress,
        status: Status,
        error: str | None = None,
        stopped: bool = False,
    ) -> Message | None:
        """End an attempt; None if another attempt took the reply over meanwhile."""
        finished = reply.model_copy(
            update={
                "status": status,
                "message": progress.text,
                "seq": progress.seq,
                "error": error,
                "stopped": stopped,
            }
        )
        fields = finished.model_dump(
            include={"status", "message", "seq", "error", "stopped"}, mode="json"
        )
        result = await self.messages.update_one(
            {"_id": progress.message_id, "attempt": progress.attempt, "status": "streaming"},
            {"$set": fields},
        )
        return finished if result.modified_count == 1 else None

    async def give_up(self, reply: Message, error: str) -> Message | None:
        """Fail a reply nobody holds for good, keeping whatever text it has.

        Only the attempt the caller saw, and only while it is still free: a reply that was
        taken over meanwhile is left to its new holder.
        """
        result = await self.messages.update_one(
            {"_id": reply.id, "attempt": reply.attempt, **free()},
            {"$set": {"status": Status.FAILED.value, "error": error}},
        )
        if result.modified_count != 1:
            return None
        return await self.get_message(reply.conversation_id, reply.id)

    async def abandoned(self, grace: timedelta, limit: int = 100) -> list[Message]:
        """Replies still `streaming` long after their lease ran out: nobody took them over."""
        cursor = self.messages.find(
            {"status": Status.STREAMING.value, "leaseUntil": {"$lt": now() - grace}}
        ).limit(limit)
        return [Message.from_document(document) async for document in cursor]

    async def request_stop(self, conversation_id: str, message_id: str) -> Message | None:
        """Stop a reply: at once if not started, else flag it for its responder.

        Returns the reply as it now is (finished if it was not started), None if unknown.
        """
        where = {"_id": message_id, "conversationId": conversation_id, "from": "assistant"}
        document = await self.messages.find_one_and_update(
            {**where, "status": Status.CREATED.value},
            {"$set": {"status": Status.COMPLETED.value, "stopped": True}},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            document = await self.messages.find_one_and_update(
                {**where, "status": Status.STREAMING.value},
                {"$set": {"stopRequested": True}},
                return_document=ReturnDocument.AFTER,
            )
        if document is None:
            return await self.get_message(conversation_id, message_id)
        return Message.from_document(document)


def _document(message: Message, order: int, extra: dict[str, Any]) -> dict[str, Any]:
    document = message.model_dump(exclude={"id"}, exclude_none=True, mode="json")
    return {"_id": message.id, "order": order, **document, **extra}
