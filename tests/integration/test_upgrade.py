"""Data stored before users, conversation documents and trees: usable after an upgrade."""

import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from shared.store.conversations import ConversationStore
from shared.store.database import Database, Document
from shared.store.starts import StartStore
from shared.store.upgrade import upgrade


@pytest.fixture
async def old_database(mongodb_url: str) -> AsyncIterator[Database]:
    """A database as an earlier version left it: messages without owner or parentId."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_url, tz_aware=True)
    database = client[f"chat_old_{uuid.uuid4().hex[:8]}"]
    base = {"conversationId": "old", "status": "completed", "seq": 1, "attempt": 1}
    await database["messages"].insert_many(
        [
            {**base, "_id": "u1", "from": "user", "message": "First  question\nhere", "order": 1,
             "timestamp": "2026-01-01T10:00:00.000Z", "replyId": "a1"},
            {**base, "_id": "a1", "from": "assistant", "message": "answer one", "order": 2,
             "timestamp": "2026-01-01T10:00:00.000Z", "userMessageId": "u1", "published": True},
            {**base, "_id": "u2", "from": "user", "message": "second", "order": 3,
             "timestamp": "2026-01-01T10:05:00.000Z", "replyId": "a2"},
            {**base, "_id": "a2", "from": "assistant", "message": "", "order": 4,
             "status": "created", "timestamp": "2026-01-01T10:05:00.000Z", "userMessageId": "u2",
             "published": True},
        ]
    )  # fmt: skip
    try:
        yield database
    finally:
        await client.drop_database(database.name)
        await client.close()


async def test_old_conversations_are_listed_and_read_as_one_chain(
    old_database: Database,
) -> None:
    await upgrade(old_database)
    await upgrade(old_database)  # a second start changes nothing
    owners = await old_database["messages"].distinct("owner")
    assert owners == ["local"], "messages stored before users are the open mode's user's"

    store = ConversationStore(old_database, "mock-model")
    conversations, following = await store.list_conversations("local", 10, None)
    assert following is None
    (conversation,) = conversations
    assert (conversation.conversation_id, conversation.title) == ("old", "First question here")
    assert conversation.message_count == 4
    assert (conversation.created_at, conversation.updated_at) == (
        "2026-01-01T10:00:00.000Z",
        "2026-01-01T10:05:00.000Z",
    )
    messages = await store.list_messages("local", "old")
    assert [message.parent_id for message in messages] == [None, "u1", "a1", "u2"]
    (reply,) = await StartStore(old_database).get_replies(["a2"])
    assert reply is not None
    (path,) = await StartStore(old_database).paths_if_next([reply])
    assert path is not None
    assert [message.id for message in path] == ["u1", "a1", "u2"]
