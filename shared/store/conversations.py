"""The API's reads of a conversation, and the stop request, the one write a reader makes."""

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from shared.schemas import Message, Status
from shared.store.documents import find_message, messages_of


class ConversationStore:
    def __init__(self, database: AsyncDatabase) -> None:
        self.messages = messages_of(database)

    async def ensure_indexes(self) -> None:
        await self.messages.create_index([("conversationId", ASCENDING), ("order", ASCENDING)])

    async def conversation_exists(self, conversation_id: str) -> bool:
        existing = {"conversationId": conversation_id}
        return await self.messages.count_documents(existing, limit=1) > 0

    async def list_messages(self, conversation_id: str) -> list[Message]:
        cursor = self.messages.find({"conversationId": conversation_id}).sort("order", ASCENDING)
        return [Message.from_document(document) async for document in cursor]

    async def get_message(self, conversation_id: str, message_id: str) -> Message | None:
        return await find_message(
            self.messages, {"_id": message_id, "conversationId": conversation_id}
        )

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
