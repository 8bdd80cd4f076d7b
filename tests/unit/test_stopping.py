"""Stopping a reply in flight: answered by its final event on the relay, else by MongoDB.

The hub is the real one, without a listener: the test hands it the events the fanout would
bring. MongoDB and the broker are small fakes that record what a stop asked of them.
"""

import asyncio
import time

import pytest

from services.api import stopping
from services.api.hub import Hub
from services.api.stopping import stop_reply
from shared.events import COMPLETED, Event, message_event
from shared.schemas import LOCAL_OWNER, Message, Status, StopRequest, TurnFreed
from tests.factories import message

CONVERSATION = "c1"
REPLY = "r1"
SHORT_WAIT = 0.2
ANSWER_TIMEOUT = 5.0


def reply(text: str, status: Status = Status.STREAMING, seq: int = 3) -> Message:
    """The reply as stored or announced; once finished, it ended by the stop."""
    stored = message("assistant", text, status, CONVERSATION, seq=seq, attempt=1, message_id=REPLY)
    return stored.model_copy(update={"stopped": status != Status.STREAMING})


class FakeConversations:
    """One reply in MongoDB; `gets` counts the reads of it after the stop's own write."""

    def __init__(self, stored: Message) -> None:
        self.stored = stored
        self.gets = 0

    async def list_messages(self, owner: str, conversation_id: str) -> list[Message]:
        return [self.stored.model_copy()]

    async def get_message(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None:
        self.gets += 1
        return self.stored.model_copy()

    async def request_stop(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None:
        return self.stored.model_copy()


class FakeRuntime:
    """The hub over the fake MongoDB; `stops` is what the responders were told."""

    def __init__(self, stored: Message) -> None:
        self.conversations = FakeConversations(stored)
        self.hub = Hub(self.conversations, capacity=16, deaf_after=10.0)
        self.stops: list[StopRequest | TurnFreed] = []
        self.announced: list[Event] = []
        self.final_heard: Message | None = None
        """The final event the relay hears once the responder is told to stop (None: nothing)."""
        self.final_stored: Message | None = None
        """What the responder writes to MongoDB once told to stop (None: nothing)."""

    async def publish_control(self, request: StopRequest | TurnFreed) -> None:
        self.stops.append(request)
        if self.final_stored is not None:
            self.conversations.stored = self.final_stored
        if self.final_heard is not None:
            self.hub.receive(dict(message_event(COMPLETED, self.final_heard)))

    async def announce(self, event: Event) -> None:
        self.announced.append(event)


async def stop(runtime: FakeRuntime) -> tuple[Message | None, float]:
    """The stop's answer, and how long it took."""
    started = time.monotonic()
    async with asyncio.timeout(ANSWER_TIMEOUT):
        answer = await stop_reply(runtime, LOCAL_OWNER, CONVERSATION, REPLY)
    return answer, time.monotonic() - started


async def test_without_a_final_event_the_stop_answers_with_mongodbs_reply_after_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The broker lost the final event: the answer is the reply as MongoDB has it by then."""
    monkeypatch.setattr(stopping, "STOP_WAIT_SECONDS", SHORT_WAIT)
    runtime = FakeRuntime(reply("partial"))
    runtime.final_stored = reply("partial text", Status.COMPLETED, seq=4)

    answer, took = await stop(runtime)

    assert answer == runtime.final_stored
    assert took >= SHORT_WAIT, "answered before the final event could have come"
    assert runtime.conversations.gets == 1
    assert runtime.stops == [
        StopRequest(owner=LOCAL_OWNER, conversation_id=CONVERSATION, message_id=REPLY)
    ]
    assert runtime.announced == [], "the responder announces the end, not the stop"
    await runtime.hub.close()


async def test_a_final_event_on_the_relay_answers_the_stop_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The answer is the final event's reply, ahead of MongoDB's, without waiting it out."""
    monkeypatch.setattr(stopping, "STOP_WAIT_SECONDS", ANSWER_TIMEOUT * 2)
    runtime = FakeRuntime(reply("partial"))
    runtime.final_heard = reply("partial text, all of it", Status.COMPLETED, seq=5)

    answer, _ = await stop(runtime)

    assert answer == runtime.final_heard
    assert runtime.conversations.gets == 0, "MongoDB is not read again"
    await runtime.hub.close()
