"""The relay's hub and live replies without a network: snapshots, filtering, repair, overflow.

The store is a small fake of our own ConversationStore's read interface; events are fed straight to
`Hub.receive`, and what a subscriber is sent is rebuilt with the same checker the WebSocket
tests use, so the contract's guarantee is checked here too.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from services.api.hub import Hub, Subscriber
from shared.events import MessageEventType, delta_event, message_event
from shared.keys import ConversationKey
from shared.schemas import LOCAL_OWNER, Message, Status
from tests.clients import Rebuilder
from tests.factories import message

CONVERSATION = "c1"
KEY = ConversationKey(LOCAL_OWNER, CONVERSATION)
NOTHING_MORE_SECONDS = 0.05
FRAME_TIMEOUT = 2.0


class FakeStore:
    """Conversations in memory; `during_read` runs inside a list read, as live events would."""

    def __init__(self) -> None:
        self.conversations: dict[tuple[str, str], dict[str, Message]] = {}
        self.during_read: Callable[[], None] | None = None
        self.gets = 0

    def put(self, stored: Message) -> None:
        key = (stored.owner, stored.conversation_id)
        self.conversations.setdefault(key, {})[stored.id] = stored

    async def list_messages(self, owner: str, conversation_id: str) -> list[Message]:
        await asyncio.sleep(0)
        if self.during_read is not None:
            self.during_read()  # live events while the database answers
        stored = self.conversations.get((owner, conversation_id), {}).values()
        return [item.model_copy() for item in stored]

    async def get_message(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None:
        self.gets += 1
        found = self.conversations.get((owner, conversation_id), {}).get(message_id)
        return None if found is None else found.model_copy()


@pytest.fixture
async def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def hub(store: FakeStore) -> AsyncIterator[Hub]:
    running = Hub(store, capacity=64, deaf_after=10.0)
    try:
        yield running
    finally:
        await running.close()


def reply(
    seq: int = 0, text: str = "", status: Status = Status.STREAMING, attempt: int = 1
) -> Message:
    return message(
        "assistant", text, status, CONVERSATION, seq=seq, attempt=attempt, message_id="r1"
    )


def delta(
    seq: int,
    attempt: int = 1,
    conversation_id: str = CONVERSATION,
    owner: str = LOCAL_OWNER,
    message_id: str = "r1",
) -> dict[str, Any]:
    return dict(delta_event(owner, conversation_id, message_id, attempt, seq, f"t{seq} "))


def text_upto(seq: int) -> str:
    return "".join(f"t{index} " for index in range(1, seq + 1))


def event(kind: MessageEventType, item: Message) -> dict[str, Any]:
    return dict(message_event(kind, item))


def stream_to(hub: Hub, seq: int, start: int = 1, attempt: int = 1) -> None:
    """The responder's view: the reply started, then deltas `start`..`seq`."""
    if start == 1:
        hub.receive(event("message.updated", reply(attempt=attempt)))
    for index in range(start, seq + 1):
        hub.receive(delta(index, attempt))


async def take(subscriber: Subscriber, count: int) -> list[dict[str, Any]]:
    """The next `count` frames the subscriber is sent, failing if they do not come."""
    return [
        orjson.loads(await asyncio.wait_for(anext(subscriber), FRAME_TIMEOUT)) for _ in range(count)
    ]


async def snapshot_of(subscriber: Subscriber) -> dict[str, Any]:
    (first,) = await take(subscriber, 1)
    return first


async def nothing_more(subscriber: Subscriber) -> bool:
    """Whether the subscriber has no further frame ready (everything here is sent at once)."""
    try:
        await asyncio.wait_for(anext(subscriber), NOTHING_MORE_SECONDS)
    except TimeoutError:
        return True
    return False


async def test_snapshot_is_the_stored_state_brought_up_to_the_live_tail(
    hub: Hub, store: FakeStore
) -> None:
    user = message("user", "question", conversation_id=CONVERSATION)
    store.put(user)
    store.put(reply(seq=1, text=text_upto(1)))  # MongoDB is behind
    stream_to(hub, 4)
    async with hub.subscribe(KEY) as subscriber:
        snapshot = await snapshot_of(subscriber)
    assert snapshot["type"] == "snapshot"
    assert snapshot["conversationId"] == CONVERSATION
    first, second = (Message.model_validate(item) for item in snapshot["messages"])
    assert first == user
    assert (second.id, second.seq, second.message) == ("r1", 4, text_upto(4))
    with pytest.raises(StopAsyncIteration):  # leaving the context unsubscribes
        await asyncio.wait_for(anext(subscriber), FRAME_TIMEOUT)


async def test_snapshot_keeps_the_stored_state_when_it_is_ahead(hub: Hub, store: FakeStore) -> None:
    store.put(reply(seq=5, text=text_upto(5), status=Status.COMPLETED))
    stream_to(hub, 2)  # this instance missed the end
    async with hub.subscribe(KEY) as subscriber:
        (stored,) = (await snapshot_of(subscriber))["messages"]
    assert (stored["seq"], stored["status"], stored["message"]) == (5, "completed", text_upto(5))


async def test_events_that_arrive_during_the_snapshot_read_are_not_sent_twice(
    hub: Hub, store: FakeStore
) -> None:
    user = message("user", "next", conversation_id=CONVERSATION)
    store.put(reply(seq=1, text=text_upto(1)))
    stream_to(hub, 1)

    def live_events() -> None:
        store.put(user)  # stored before the read returned ...
        hub.receive(event("message.created", user))  # ... and announced while it ran
        stream_to(hub, 3, start=2)

    store.during_read = live_events
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        hub.receive(delta(4))
        sent = await take(subscriber, 1)
        rebuilder.apply(sent[0])
        assert await nothing_more(subscriber)
    assert rebuilder.snapshot is not None
    assert [item.id for item in rebuilder.snapshot][-1] == user.id
    assert [frame["seq"] for frame in sent] == [4], "queued deltas 2-3 are in the snapshot"
    assert rebuilder.text("r1") == text_upto(4)


async def test_duplicate_and_stale_deltas_are_dropped(hub: Hub) -> None:
    async with hub.subscribe(KEY) as subscriber:
        await snapshot_of(subscriber)
        hub.receive(event("message.created", reply(status=Status.CREATED, attempt=0)))
        stream_to(hub, 2)
        hub.receive(delta(2))
        hub.receive(delta(1))
        hub.receive(delta(3, attempt=0))  # from an attempt that was superseded
        hub.receive(delta(3))
        frames = await take(subscriber, 5)
        assert await nothing_more(subscriber)
    assert [(frame["type"], frame.get("seq")) for frame in frames] == [
        ("message.created", None),
        ("message.updated", None),
        ("message.delta", 1),
        ("message.delta", 2),
        ("message.delta", 3),
    ]


async def test_a_gap_is_held_back_and_repaired_from_the_store(hub: Hub, store: FakeStore) -> None:
    store.put(reply(seq=2, text=text_upto(2)))
    stream_to(hub, 2)
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        hub.receive(delta(4))  # delta 3 was lost on the way
        hub.receive(delta(5))
        assert await nothing_more(subscriber), "nothing after a gap is shown before the repair"

        await _until(lambda: store.gets >= 1)  # the repair asked MongoDB, which is behind
        store.put(reply(seq=3, text=text_upto(3)))  # MongoDB catches up
        frames = []
        while rebuilder.seq("r1") < 5:
            (frame,) = await take(subscriber, 1)
            rebuilder.apply(frame)
            frames.append(frame)
        hub.receive(delta(6))
        (after,) = await take(subscriber, 1)
        rebuilder.apply(after)
    assert all(frame["type"] == "message.updated" for frame in frames)
    assert after["type"] == "message.delta" and after["seq"] == 6
    assert rebuilder.text("r1") == text_upto(6)


async def test_a_retry_restarts_the_reply_and_drops_the_old_attempt(hub: Hub) -> None:
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        hub.receive(event("message.created", reply(status=Status.CREATED, attempt=0)))
        stream_to(hub, 2, attempt=1)
        stream_to(hub, 1, attempt=2)  # redelivered after a crash: from seq 0 again
        hub.receive(delta(3, attempt=1))  # a straggler of the dead attempt
        hub.receive(delta(2, attempt=2))
        for frame in await take(subscriber, 7):
            rebuilder.apply(frame)
        assert await nothing_more(subscriber)
    current = rebuilder.messages["r1"]
    assert (current.attempt, current.seq, current.message) == (2, 2, text_upto(2))


async def test_completion_replaces_the_copy_and_later_deltas_are_dropped(hub: Hub) -> None:
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        hub.receive(event("message.created", reply(status=Status.CREATED, attempt=0)))
        stream_to(hub, 3)
        done = reply(seq=3, text=text_upto(3), status=Status.COMPLETED)
        hub.receive(event("message.completed", done))
        hub.receive(delta(3))
        for frame in await take(subscriber, 6):
            rebuilder.apply(frame)
        assert await nothing_more(subscriber)
    assert rebuilder.messages["r1"] == done


def end_events(rebuilder: Rebuilder) -> list[tuple[str, str]]:
    """(type, status) of each event about r1 from its last `message.updated` on."""
    events = [
        (e["type"], e.get("message", {}).get("status", "")) for e in rebuilder.events_of("r1")
    ]
    updates = [index for index, (kind, _) in enumerate(events) if kind == "message.updated"]
    return events[updates[-1] :] if updates else events


async def test_an_end_heard_after_lost_deltas_catches_up_then_is_announced_once(
    hub: Hub,
) -> None:
    """Issue 9.1: the catch-up is an update still streaming; the end is `message.completed`."""
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        hub.receive(event("message.created", reply(status=Status.CREATED, attempt=0)))
        stream_to(hub, 2)
        done = reply(seq=5, text=text_upto(5), status=Status.COMPLETED)
        hub.receive(event("message.completed", done))  # deltas 3-5 were lost
        hub.receive(event("message.completed", done))  # and announced again (stop route)
        for frame in await take(subscriber, 6):
            rebuilder.apply(frame)
        assert await nothing_more(subscriber)
    assert end_events(rebuilder) == [
        ("message.updated", "streaming"),
        ("message.completed", "completed"),
    ]
    assert rebuilder.messages["r1"] == done


async def test_a_repair_that_finds_the_reply_finished_announces_its_end(
    hub: Hub, store: FakeStore
) -> None:
    """The path of a resynchronisation after a broker outage: MongoDB has the end first."""
    store.put(reply(seq=2, text=text_upto(2)))
    stream_to(hub, 2)
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        done = reply(seq=6, text=text_upto(6), status=Status.COMPLETED)
        store.put(done)
        hub.receive(delta(4))  # delta 3 was lost: the repair reads MongoDB
        for frame in await take(subscriber, 2):
            rebuilder.apply(frame)
        hub.receive(delta(5))
        hub.receive(event("message.completed", done))  # the live end, arriving late
        assert await nothing_more(subscriber)
    assert end_events(rebuilder) == [
        ("message.updated", "streaming"),
        ("message.completed", "completed"),
    ]
    assert rebuilder.messages["r1"] == done


async def test_a_finished_state_is_announced_as_the_end_whatever_the_event_said(
    hub: Hub,
) -> None:
    async with hub.subscribe(KEY) as subscriber:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(subscriber))
        hub.receive(event("message.created", reply(status=Status.CREATED, attempt=0)))
        stream_to(hub, 1)
        failed = reply(seq=1, text=text_upto(1), status=Status.FAILED).model_copy(
            update={"error": "model unavailable"}
        )
        hub.receive(event("message.updated", failed))
        frames = await take(subscriber, 4)
        for frame in frames:
            rebuilder.apply(frame)
    assert frames[-1]["type"] == "message.failed"
    assert rebuilder.messages["r1"] == failed


async def test_subscribers_get_only_their_own_conversation(hub: Hub) -> None:
    async with (
        hub.subscribe(KEY) as mine,
        hub.subscribe(ConversationKey(LOCAL_OWNER, "c2")) as other,
    ):
        await snapshot_of(mine)
        await snapshot_of(other)
        hub.receive(event("message.created", message("user", "for c2", conversation_id="c2")))
        hub.receive(delta(1, conversation_id="c2"))
        (created,) = await take(other, 1)
        assert created["message"]["conversationId"] == "c2"
        assert await nothing_more(mine)


async def test_a_subscriber_that_falls_too_far_behind_is_told_to_reconnect(
    store: FakeStore,
) -> None:
    hub = Hub(store, capacity=16, deaf_after=10.0)
    async with hub.subscribe(KEY) as slow, hub.subscribe(KEY) as fast:
        await snapshot_of(slow)
        await snapshot_of(fast)
        stream_to(hub, 8)
        await take(fast, 9)
        stream_to(hub, 17, start=9)
        assert slow.overflowed.is_set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(slow), FRAME_TIMEOUT)
        assert len(await take(fast, 9)) == 9, "others are not held back by the slow one"
    await hub.close()


async def _until(condition: Callable[[], bool]) -> None:
    """Let the hub's repair task run until `condition` holds, within the frame deadline."""
    async with asyncio.timeout(FRAME_TIMEOUT):
        while not condition():  # noqa: ASYNC110 - the condition is the fake store's read count
            await asyncio.sleep(0.001)


def thought(seq: int, attempt: int = 1, text: str = "") -> dict[str, Any]:
    """A delta carrying reasoning (and maybe text) under the same `seq` as any delta."""
    return dict(delta_event(LOCAL_OWNER, CONVERSATION, "r1", attempt, seq, text, f"r{seq} "))


async def test_reasoning_is_rebuilt_by_late_joiners_and_restarted_by_a_retry(
    hub: Hub, store: FakeStore
) -> None:
    store.put(reply())
    hub.receive(event("message.updated", reply()))
    hub.receive(thought(1))
    hub.receive(thought(2, text="t2 "))
    async with hub.subscribe(KEY) as joiner:
        rebuilder = Rebuilder(CONVERSATION)
        rebuilder.apply(await snapshot_of(joiner))
        joined = rebuilder.messages["r1"]
        assert (joined.seq, joined.reasoning, joined.message) == (2, "r1 r2 ", "t2 ")
        hub.receive(thought(3))
        stream_to(hub, 1, attempt=2)  # a retry starts from seq 0, reasoning and all
        hub.receive(thought(2, attempt=2))
        done = reply(seq=2, text="t1 ", status=Status.COMPLETED, attempt=2)
        done = done.model_copy(update={"reasoning": "r2 "})
        hub.receive(event("message.completed", done))
        frames = await take(joiner, 5)
        assert frames[0] == {
            "type": "message.delta",
            "conversationId": CONVERSATION,
            "messageId": "r1",
            "seq": 3,
            "delta": "",
            "reasoning": "r3 ",
        }
        for frame in frames:
            rebuilder.apply(frame)  # checks the rebuilt reasoning equals the final one
        assert await nothing_more(joiner)
    assert rebuilder.messages["r1"] == done


async def test_two_users_with_the_same_conversation_id_never_see_each_other(hub: Hub) -> None:
    alice, bob = ConversationKey("alice", CONVERSATION), ConversationKey("bob", CONVERSATION)
    async with hub.subscribe(alice) as for_alice, hub.subscribe(bob) as for_bob:
        await snapshot_of(for_alice)
        await snapshot_of(for_bob)
        bobs = message("user", "bob's secret", conversation_id=CONVERSATION, owner="bob")
        bobs_reply = message(
            "assistant", "", Status.STREAMING, CONVERSATION, attempt=1, message_id="bob-reply"
        ).model_copy(update={"owner": "bob"})
        hub.receive(event("message.created", bobs))
        hub.receive(event("message.updated", bobs_reply))
        hub.receive(delta(1, owner="bob", message_id="bob-reply"))
        created, _, delta_frame = await take(for_bob, 3)
        assert created["message"]["message"] == "bob's secret"
        assert delta_frame["messageId"] == "bob-reply"
        assert "owner" not in delta_frame, "deltas reach clients without the routing field"
        assert await nothing_more(for_alice)
