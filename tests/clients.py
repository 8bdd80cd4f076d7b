"""A WebSocket subscriber that rebuilds a conversation from its snapshot and events.

Every frame is checked against the contract's guarantee as it arrives, so any test that
subscribes also proves it: frames belong to the subscribed conversation, deltas continue from
the snapshot's `seq` with no gap and no duplicate, and the rebuilt text and reasoning equal those
of `message.completed` (a `message.failed` may replace them with the stored ones so far).
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Self, get_args

import orjson
from websockets.asyncio.client import ClientConnection, connect

from shared.events import (
    COMPLETED,
    CONVERSATION_DELETED,
    CREATED,
    DELTA,
    FAILED,
    FINISHED_EVENT,
    SNAPSHOT,
    MessageEventType,
)
from shared.schemas import FINISHED, ChatAccepted, Message, Status

DEFAULT_TIMEOUT = 20.0
MESSAGE_EVENTS = frozenset(get_args(MessageEventType))


class Rebuilder:
    """Client-side state of one conversation, built only from frames, checking each one."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.snapshot: list[Message] | None = None
        self.messages: dict[str, Message] = {}
        self.events: list[dict[str, Any]] = []
        self.deleted = False

    def apply(self, frame: dict[str, Any]) -> None:
        kind: str = frame.get("type", "")
        if self.snapshot is None:
            assert kind == SNAPSHOT, f"the first frame must be the snapshot, got {frame}"
            assert frame["conversationId"] == self.conversation_id, frame
            self.snapshot = [Message.model_validate(item) for item in frame["messages"]]
            for message in self.snapshot:
                self._check_mine(message.conversation_id, frame)
                self.messages[message.id] = message
            return
        assert kind != SNAPSHOT, f"a second snapshot arrived: {frame}"
        assert not self.deleted, f"a frame after the conversation was deleted: {frame}"
        self.events.append(frame)
        if kind == DELTA:
            self._apply_delta(frame)
        elif kind in MESSAGE_EVENTS:
            self._apply_message(kind, Message.model_validate(frame["message"]), frame)
        elif kind == CONVERSATION_DELETED:
            assert frame == {"type": kind, "conversationId": self.conversation_id}, frame
            self.deleted = True
        else:
            raise AssertionError(f"unknown frame type: {frame}")

    def _check_mine(self, conversation_id: str, frame: dict[str, Any]) -> None:
        assert conversation_id == self.conversation_id, (
            f"subscriber of {self.conversation_id} got a frame of {conversation_id}: {frame}"
        )

    def _apply_delta(self, frame: dict[str, Any]) -> None:
        self._check_mine(frame["conversationId"], frame)
        current = self.messages.get(frame["messageId"])
        assert current is not None, f"delta for a message never announced: {frame}"
        assert frame["seq"] == current.seq + 1, (
            f"delta seq {frame['seq']} does not follow seq {current.seq} of "
            f"{current.id} (gap or duplicate): {frame}"
        )
        reasoning = (current.reasoning or "") + frame.get("reasoning", "")
        self.messages[current.id] = current.model_copy(
            update={
                "message": current.message + frame["delta"],
                "reasoning": reasoning or None,
                "seq": frame["seq"],
            }
        )

    def _apply_message(self, kind: str, message: Message, frame: dict[str, Any]) -> None:
        self._check_mine(message.conversation_id, frame)
        current = self.messages.get(message.id)
        if kind == CREATED:
            assert current is None, f"message.created for a message already known: {frame}"
        elif kind == FAILED:
            self._check_failure(current, message, frame)
        else:
            assert current is not None, f"{kind} for a message never announced: {frame}"
            assert (message.attempt, message.seq) >= (current.attempt, current.seq), (
                f"{kind} goes back from seq {current.seq} (attempt {current.attempt}): {frame}"
            )
        if kind == COMPLETED:
            assert message.status == Status.COMPLETED, frame
            assert current is not None
            assert current.message == message.message, (
                f"rebuilt text {current.message!r} differs from the final text "
                f"{message.message!r} of {message.id}"
            )
            assert current.reasoning == message.reasoning, (
                f"rebuilt reasoning {current.reasoning!r} differs from the final reasoning "
                f"{message.reasoning!r} of {message.id}"
            )
            assert (current.attempt, current.seq) == (message.attempt, message.seq), frame
        self.messages[message.id] = message

    @staticmethod
    def _check_failure(current: Message | None, message: Message, frame: dict[str, Any]) -> None:
        """A failure replaces the client's copy, keeping the text so far.

        When the reply's writer died and another process failed it, "so far" is what MongoDB
        had stored, which can lag what was streamed: then the final text is a prefix of the
        rebuilt one. Otherwise the two are equal.
        """
        assert message.status == Status.FAILED, frame
        assert current is not None, f"message.failed for a message never announced: {frame}"
        if (message.attempt, message.seq) >= (current.attempt, current.seq):
            assert current.message == message.message or message.attempt > current.attempt, (
                f"rebuilt text {current.message!r} differs from the failed text "
                f"{message.message!r} of {message.id}"
            )
        else:
            assert message.attempt == current.attempt, frame
            assert current.message.startswith(message.message), (
                f"the failed text {message.message!r} of {message.id} is not what was "
                f"streamed so far {current.message!r}"
            )

    # Queries used by the tests' wait conditions and assertions.

    def get(self, message_id: str) -> Message | None:
        return self.messages.get(message_id)

    def text(self, message_id: str) -> str:
        return self.messages[message_id].message

    def is_finished(self, message_id: str) -> bool:
        message = self.messages.get(message_id)
        return message is not None and message.status in FINISHED

    def words(self, message_id: str) -> int:
        """Words received so far: the mock's tokens, however the deltas grouped them."""
        message = self.messages.get(message_id)
        return 0 if message is None else len(message.message.split())

    def seq(self, message_id: str) -> int:
        message = self.messages.get(message_id)
        return 0 if message is None else message.seq

    def events_of(self, message_id: str) -> list[dict[str, Any]]:
        return [event for event in self.events if _message_id(event) == message_id]

    def timeline(self) -> list[tuple[str, str, int | None]]:
        """(type, message id, delta seq) of every event: what two subscribers must agree on."""
        return [(event["type"], _message_id(event), event.get("seq")) for event in self.events]

    def final(self, message_id: str) -> dict[str, Any]:
        """The `message.completed` / `message.failed` frame of a message."""
        finals = [
            event
            for event in self.events_of(message_id)
            if event["type"] in FINISHED_EVENT.values()
        ]
        assert len(finals) == 1, f"expected one final event for {message_id}, got {finals}"
        return finals[0]


def _message_id(event: dict[str, Any]) -> str:
    if event["type"] == DELTA:
        return str(event["messageId"])
    return str(event["message"]["id"])


class Subscriber(Rebuilder):
    """A live WebSocket subscription feeding a Rebuilder, read only while a test waits on it."""

    def __init__(self, websocket: ClientConnection, conversation_id: str) -> None:
        super().__init__(conversation_id)
        self.websocket = websocket

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        ws_url: str,
        conversation_id: str,
        timeout: float = DEFAULT_TIMEOUT,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[Self]:
        """Connect and read the snapshot before handing the subscriber to the test."""
        url = f"{ws_url}/conversations/{conversation_id}/stream"
        async with connect(
            url, max_size=None, open_timeout=timeout, additional_headers=headers
        ) as websocket:
            subscriber = cls(websocket, conversation_id)
            await subscriber.until(lambda s: s.snapshot is not None, timeout, "the snapshot")
            yield subscriber

    async def until(
        self,
        condition: Callable[[Self], bool],
        timeout: float = DEFAULT_TIMEOUT,
        what: str = "the condition",
    ) -> Self:
        """Read frames until `condition` holds, or fail at the deadline."""
        deadline = time.monotonic() + timeout
        while not condition(self):
            remaining = deadline - time.monotonic()
            try:
                raw = await asyncio.wait_for(self.websocket.recv(), max(remaining, 0.001))
            except TimeoutError:
                raise AssertionError(
                    f"subscriber of {self.conversation_id}: timed out after {timeout:.0f}s "
                    f"waiting for {what}; last events: {self.timeline()[-5:]}"
                ) from None
            self.apply(orjson.loads(raw))
        return self

    async def until_words(
        self, message_id: str, count: int, timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        """Read until the message holds at least `count` of the mock's tokens."""
        await self.until(lambda s: s.words(message_id) >= count, timeout, f"token {count}")
        return self.messages[message_id]

    async def until_finished(self, message_id: str, timeout: float = DEFAULT_TIMEOUT) -> Message:
        await self.until(lambda s: s.is_finished(message_id), timeout, f"{message_id} to finish")
        return self.messages[message_id]

    async def until_only(
        self, accepted: Sequence[ChatAccepted], timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        """Read until the `accepted` requests' replies finish, and check that every event was
        theirs: requests refused before them on the same API instance published nothing, since
        anything they had published would have come first. No waiting on silence needed."""
        for request in accepted:
            await self.until_finished(request.message_id, timeout)
        theirs = {request.message_id for request in accepted}
        theirs |= {request.user_message_id for request in accepted}
        kind, first, _ = self.timeline()[0]
        assert kind == CREATED and first in theirs, f"the first event was not theirs: {first}"
        others = [event for event in self.timeline() if event[1] not in theirs]
        assert not others, f"events of other requests: {others}"
