"""A post racing a delete, and `ifBusy: reject` posts racing each other, step by step.

Each test runs the stores against a database of its own and makes the race happen at a chosen
point: one store's MongoDB call first runs the other operation (whole, or up to a point where
it waits), so every interleaving is exact, with no timing involved. What a user would check:
a deleted conversation stays deleted (no document of it is left, nothing is listed) and a
refused post leaves nothing; of two posts that refuse to wait, one is stored.
"""

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from services.api.posting import new_turn
from shared.schemas import LOCAL_OWNER
from shared.store.conversations import ConversationStore
from shared.store.database import Collection, Database, Document
from shared.store.turns import ConversationBusy, ConversationGone, NotStored, Turn, TurnStore
from tests.helpers import leftovers, new_conversation_id

Step = Callable[[], Awaitable[Any]]


@pytest.fixture
async def database(mongodb_url: str) -> AsyncIterator[Database]:
    """A database of the test's own instead of the stack's: no service writes to it."""
    client: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_url, tz_aware=True)
    database = client[f"chat_races_{uuid.uuid4().hex[:8]}"]
    try:
        yield database
    finally:
        await client.drop_database(database.name)
        await client.close()


@pytest.fixture
async def turns(database: Database) -> TurnStore:
    store = TurnStore(database)
    await store.ensure_indexes()
    return store


@pytest.fixture
async def conversations(database: Database) -> ConversationStore:
    store = ConversationStore(database, "mock-model")
    await store.ensure_indexes()
    return store


def interleave(
    monkeypatch: pytest.MonkeyPatch,
    collection: Collection,
    method: str,
    before: Step | None = None,
    after: Step | None = None,
) -> None:
    """Run `before` / `after` around the first call of `collection.method`."""
    original = getattr(collection, method)
    calls = 0

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if before is not None and calls == 1:
            await before()
        try:
            return await original(*args, **kwargs)
        finally:
            if after is not None and calls == 1:
                await after()

    monkeypatch.setattr(collection, method, wrapped)


def _turn(conversation_id: str, reject_if_busy: bool = False) -> Turn:
    turn = new_turn(LOCAL_OWNER, conversation_id, f"hello {uuid.uuid4().hex}", None)
    turn.follows_latest = True
    turn.reject_if_busy = reject_if_busy
    return turn


async def _post(store: TurnStore, *batch: Turn) -> dict[int, NotStored]:
    return await store.insert_turns([(turn, None) for turn in batch])


async def _existing(turns: TurnStore, conversation_id: str) -> Turn:
    first = _turn(conversation_id)
    assert await _post(turns, first) == {}
    return first


async def _gone_for_good(
    database: Database, conversations: ConversationStore, conversation_id: str
) -> None:
    assert await leftovers(database, conversation_id) == []
    listed, _ = await conversations.list_conversations(LOCAL_OWNER, 100, None)
    assert conversation_id not in [item.conversation_id for item in listed]


def _delete(conversations: ConversationStore, conversation_id: str, deleted: list[bool]) -> Step:
    async def delete() -> None:
        deleted.append(await conversations.delete(LOCAL_OWNER, conversation_id))

    return delete


@pytest.mark.parametrize("existing", [True, False], ids=["existing", "new"])
async def test_a_delete_between_a_posts_messages_and_its_summary_leaves_nothing(
    database: Database,
    turns: TurnStore,
    conversations: ConversationStore,
    monkeypatch: pytest.MonkeyPatch,
    existing: bool,
) -> None:
    """The delete removes the post's messages too; the post must not then write the document
    of a conversation with no messages (listed, but empty)."""
    conversation_id = new_conversation_id()
    if existing:
        await _existing(turns, conversation_id)
    deleted: list[bool] = []
    interleave(
        monkeypatch,
        turns.messages,
        "insert_many",
        after=_delete(conversations, conversation_id, deleted),
    )

    refused = await _post(turns, _turn(conversation_id))

    assert deleted == [True]
    assert isinstance(refused.get(0), ConversationGone)
    await _gone_for_good(database, conversations, conversation_id)


async def test_a_delete_between_a_posts_read_and_its_messages_refuses_the_post(
    database: Database,
    turns: TurnStore,
    conversations: ConversationStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The post read the conversation (and its latest message, its parent) before the delete:
    its messages, stored after, must not become a conversation of their own."""
    conversation_id = new_conversation_id()
    await _existing(turns, conversation_id)
    deleted: list[bool] = []
    interleave(
        monkeypatch,
        turns.messages,
        "insert_many",
        before=_delete(conversations, conversation_id, deleted),
    )

    refused = await _post(turns, _turn(conversation_id))

    assert deleted == [True]
    assert isinstance(refused.get(0), ConversationGone)
    await _gone_for_good(database, conversations, conversation_id)


@pytest.mark.parametrize("step", ["delete_many", "delete_one"])
async def test_a_post_while_a_delete_is_under_way_is_refused(
    database: Database,
    turns: TurnStore,
    conversations: ConversationStore,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
) -> None:
    """Posted after the delete began (before it removes the messages, or its last document)."""
    conversation_id = new_conversation_id()
    await _existing(turns, conversation_id)
    refused: list[dict[int, NotStored]] = []

    async def post() -> None:
        refused.append(await _post(turns, _turn(conversation_id)))

    collection = conversations.messages if step == "delete_many" else conversations.conversations
    interleave(monkeypatch, collection, step, before=post)

    assert await conversations.delete(LOCAL_OWNER, conversation_id)

    assert isinstance(refused[0].get(0), ConversationGone)
    await _gone_for_good(database, conversations, conversation_id)


async def test_a_post_summarised_while_a_delete_is_under_way_is_withdrawn(
    database: Database,
    turns: TurnStore,
    conversations: ConversationStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The post read the conversation and stored its messages before the delete began, and
    writes its document after the delete marked it and before the delete ends."""
    conversation_id = new_conversation_id()
    await _existing(turns, conversation_id)
    marked, resume = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        marked.set()
        await resume.wait()

    interleave(monkeypatch, conversations.messages, "delete_many", before=hold)
    deleting: list[asyncio.Task[bool]] = []

    async def start_delete() -> None:
        deleting.append(asyncio.create_task(conversations.delete(LOCAL_OWNER, conversation_id)))
        await marked.wait()

    interleave(monkeypatch, turns.messages, "insert_many", after=start_delete)

    refused = await _post(turns, _turn(conversation_id))
    resume.set()

    assert await deleting[0]
    assert isinstance(refused.get(0), ConversationGone)
    await _gone_for_good(database, conversations, conversation_id)


async def test_a_post_after_the_delete_starts_the_conversation_afresh(
    database: Database, turns: TurnStore, conversations: ConversationStore
) -> None:
    conversation_id = new_conversation_id()
    await _existing(turns, conversation_id)
    assert await conversations.delete(LOCAL_OWNER, conversation_id)

    again = _turn(conversation_id)
    assert await _post(turns, again) == {}

    conversation = await conversations.get_conversation(LOCAL_OWNER, conversation_id)
    assert conversation is not None and conversation.message_count == 2
    messages = await conversations.list_messages(LOCAL_OWNER, conversation_id)
    assert [message.id for message in messages] == [again.user.id, again.reply.id]
    assert messages[0].parent_id is None


async def test_of_two_rejecting_posts_at_once_one_is_stored(
    database: Database,
    turns: TurnStore,
    conversations: ConversationStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two instances store an `ifBusy: reject` post each to an idle conversation, both
    messages in before either checks: the one created first is stored, the other refused with
    its reply, as if it had come a moment later."""
    conversation_id = new_conversation_id()
    await _existing(turns, conversation_id)
    await _finish_replies(database, conversation_id)
    other = TurnStore(database)
    both_in = asyncio.Barrier(2)
    for store in (turns, other):
        interleave(monkeypatch, store.messages, "insert_many", after=both_in.wait)
    first, second = _turn(conversation_id, reject_if_busy=True), _turn(conversation_id, True)

    refused = await asyncio.gather(_post(turns, first), _post(other, second))

    assert refused[0] == {}
    busy = refused[1].get(0)
    assert isinstance(busy, ConversationBusy) and busy.reply_id == first.reply.id
    messages = await conversations.list_messages(LOCAL_OWNER, conversation_id)
    assert [message.id for message in messages][-2:] == [first.user.id, first.reply.id]
    conversation = await conversations.get_conversation(LOCAL_OWNER, conversation_id)
    assert conversation is not None and conversation.message_count == len(messages) == 4


async def test_a_rejecting_post_behind_one_of_its_own_batch_is_refused(
    database: Database, turns: TurnStore, conversations: ConversationStore
) -> None:
    conversation_id = new_conversation_id()
    queued, rejecting = _turn(conversation_id), _turn(conversation_id, reject_if_busy=True)

    refused = await _post(turns, queued, rejecting)

    assert list(refused) == [1]
    busy = refused[1]
    assert isinstance(busy, ConversationBusy) and busy.reply_id == queued.reply.id
    messages = await conversations.list_messages(LOCAL_OWNER, conversation_id)
    assert [message.id for message in messages] == [queued.user.id, queued.reply.id]


async def _finish_replies(database: Database, conversation_id: str) -> None:
    """As a responder would: every reply of the conversation written."""
    await database["messages"].update_many(
        {"conversationId": conversation_id, "from": "assistant"},
        {"$set": {"status": "completed"}},
    )
