"""MongoDB storage of conversations and messages, through PyMongo's native asyncio API."""

import asyncio
from dataclasses import dataclass
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.schemas import Message, Status, utc_timestamp
from shared.startup import DependencyUnavailable

UNFINISHED = [Status.CREATED.value, Status.STREAMING.value]


def new_id() -> str:
    """Short, unique and time-ordered: ids travel in every delta frame."""
    return str(ObjectId())


@dataclass(slots=True)
class Progress:
    """A reply's text so far, as the responder hands it to the periodic writer."""

    message_id: str
    attempt: int
    text: str
    seq: int


async def connect(url: str, database: str, timeout: float) -> AsyncDatabase:
    client: AsyncMongoClient = AsyncMongoClient(
        url, serverSelectionTimeoutMS=int(timeout * 1000), tz_aware=True
    )
    try:
        await asyncio.wait_for(client.admin.command("ping"), timeout)
    except (PyMongoError, TimeoutError) as error:
        await client.close()
        raise DependencyUnavailable("MONGODB_URL", url, error) from error
    return client[database]


class MessageStore:
    def __init__(self, database: AsyncDatabase) -> None:
        self.database = database
        self.conversations = database["conversations"]
        self.messages = database["messages"]

    async def ensure_indexes(self) -> None:
        await self.messages.create_index([("conversationId", ASCENDING), ("order", ASCENDING)])

    async def ping(self) -> None:
        await self.database.command("ping")

    async def open_turn(self, conversation_id: str, text: str) -> tuple[Message, Message]:
        """Store the user's message and the assistant's placeholder, next in the conversation."""
        order = await self._reserve_orders(conversation_id, 2)
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
        reply = Message(
            id=new_id(),
            conversationId=conversation_id,
            sender="assistant",
            message="",
            status=Status.CREATED,
            timestamp=timestamp,
            seq=0,
        )
        await self.messages.insert_many(
            [_document(user, order - 1), _document(reply, order)], ordered=True
        )
        return user, reply

    async def _reserve_orders(self, conversation_id: str, count: int) -> int:
        """Atomically take the next `count` positions; returns the last one."""
        for _ in range(2):
            try:
                conversation = await self.conversations.find_one_and_update(
                    {"_id": conversation_id},
                    {
                        "$inc": {"messageCount": count},
                        "$setOnInsert": {"createdAt": utc_timestamp()},
                    },
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                return int(conversation["messageCount"])
            except DuplicateKeyError:
                continue  # two first posts raced on the upsert; the loser retries as an update
        raise RuntimeError(f"could not reserve a position in conversation {conversation_id}")

    async def conversation_exists(self, conversation_id: str) -> bool:
        return await self.conversations.count_documents({"_id": conversation_id}, limit=1) > 0

    async def list_messages(self, conversation_id: str) -> list[Message]:
        cursor = self.messages.find({"conversationId": conversation_id}).sort("order", ASCENDING)
        return [Message.from_document(document) async for document in cursor]

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        document = await self.messages.find_one(
            {"_id": message_id, "conversationId": conversation_id}
        )
        return None if document is None else Message.from_document(document)

    async def has_unfinished_before(self, reply: Message) -> bool:
        """Whether an earlier reply in the conversation still has to finish first."""
        order = await self._order_of(reply.id)
        earlier = {
            "conversationId": reply.conversation_id,
            "from": "assistant",
            "order": {"$lt": order},
            "status": {"$in": UNFINISHED},
        }
        return await self.messages.count_documents(earlier, limit=1) > 0

    async def history_before(self, reply: Message, limit: int) -> list[Message]:
        """The last `limit` messages before `reply`, oldest first."""
        order = await self._order_of(reply.id)
        cursor = (
            self.messages.find({"conversationId": reply.conversation_id, "order": {"$lt": order}})
            .sort("order", -1)
            .limit(limit)
        )
        newest_first = [Message.from_document(document) async for document in cursor]
        return newest_first[::-1]

    async def _order_of(self, message_id: str) -> int:
        document = await self.messages.find_one({"_id": message_id}, {"order": 1})
        if document is None:
            raise LookupError(f"message {message_id} is not stored")
        return int(document["order"])

    async def start_reply(self, message_id: str) -> Message | None:
        """Claim an unfinished reply for a new attempt, from an empty text; None if finished."""
        document = await self.messages.find_one_and_update(
            {"_id": message_id, "status": {"$in": UNFINISHED}},
            {
                "$set": {"status": Status.STREAMING.value, "message": "", "seq": 0},
                "$unset": {"error": ""},
                "$inc": {"attempt": 1},
            },
            return_document=ReturnDocument.AFTER,
        )
        return None if document is None else Message.from_document(document)

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
        self, progress: Progress, status: Status, error: str | None = None
    ) -> Message | None:
        """End an attempt; None if another attempt took the reply over meanwhile."""
        fields: dict[str, Any] = {
            "status": status.value,
            "message": progress.text,
            "seq": progress.seq,
        }
        if error is not None:
            fields["error"] = error
        document = await self.messages.find_one_and_update(
            {"_id": progress.message_id, "attempt": progress.attempt, "status": "streaming"},
            {"$set": fields},
            return_document=ReturnDocument.AFTER,
        )
        return None if document is None else Message.from_document(document)


def _document(message: Message, order: int) -> dict[str, Any]:
    document = message.model_dump(exclude={"id"}, exclude_none=True, mode="json")
    return {"_id": message.id, "order": order, **document}
