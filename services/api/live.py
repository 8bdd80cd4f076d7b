"""The live state of the replies in flight, as this API instance hears them on the fanout.

MongoDB is written only every few hundred milliseconds, so every instance keeps the live tail of
every reply in flight: a new subscriber's snapshot is MongoDB's state brought up to that tail. A
gap in the fanout (a lost delta, a missed start, a broker outage) is repaired from MongoDB with a
`message.updated` instead of being shown to clients, and after a broker reconnection every reply
in flight is checked against MongoDB the same way. What clients must be told goes to `send`.
"""

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import ValidationError

from shared.events import DELTA, FINISHED_EVENT, UPDATED
from shared.keys import ConversationKey
from shared.logs import about_message
from shared.schemas import FINISHED, Message, Status

log = logging.getLogger(__name__)


class StoredMessages(Protocol):
    """The reads of MongoDB that snapshots and repairs need (a ConversationStore has them)."""

    async def list_messages(self, owner: str, conversation_id: str) -> list[Message]: ...

    async def get_message(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None: ...


Version = tuple[int, int, int]
"""(attempt, finished, seq): rises with every change a client must see, retries included.

A finished state outranks any unfinished one of its attempt, even one with more deltas: a
reply failed by another process carries MongoDB's text, which may lag the live stream.
"""

Send = Callable[[dict[str, Any], Version, dict[str, Any]], None]
"""Tell the subscribers of a message's conversation an event that brings them to a version."""

DELTA_FIELDS = ("type", "conversationId", "messageId", "seq", "delta")
RETAIN_FINISHED_SECONDS = 60.0
REPAIR_POLL_SECONDS = (0.05, 1.0)
REPAIR_GIVE_UP_SECONDS = 600.0


def version_of(message: dict[str, Any]) -> Version:
    return (message.get("attempt", 0), int(message["status"] in FINISHED), message["seq"])


def unfinished(message: dict[str, Any]) -> dict[str, Any]:
    """A finished reply's text as it stood just before its end: streaming, no error."""
    text = {**message, "status": Status.STREAMING.value, "stopped": False}
    text.pop("error", None)
    return text


class Tail:
    """This instance's latest state of one reply, kept current by deltas.

    `gap` holds deltas that arrived after a missing one; they wait for a repair from MongoDB.
    """

    __slots__ = ("finished_at", "gap", "message", "parts", "repairing", "thoughts")

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message
        self.parts: list[str] = [message["message"]]
        self.thoughts: list[str] = [message.get("reasoning") or ""]
        self.gap: list[dict[str, Any]] = []
        self.repairing = False
        self.finished_at: float | None = None

    @property
    def version(self) -> Version:
        return version_of(self.message)

    def state(self) -> dict[str, Any]:
        if len(self.parts) > 1:
            self.parts = ["".join(self.parts)]
        self.message["message"] = self.parts[0]
        if len(self.thoughts) > 1:
            self.thoughts = ["".join(self.thoughts)]
        if self.thoughts[0]:
            self.message["reasoning"] = self.thoughts[0]
        return self.message

    @property
    def finished(self) -> bool:
        return self.message["status"] in FINISHED

    def extend(self, delta: dict[str, Any]) -> bool:
        """Apply the next delta; False if it does not follow on."""
        message = self.message
        if self.finished or delta["attempt"] != message["attempt"]:
            return False
        if delta["seq"] != message["seq"] + 1:
            return False
        self.parts.append(delta["delta"])
        if reasoning := delta.get("reasoning"):
            self.thoughts.append(reasoning)
        message["seq"] = delta["seq"]
        return True

    def is_ahead(self, delta: dict[str, Any]) -> bool:
        """Whether `delta` belongs after this state: never once the reply is finished."""
        position = (self.message["attempt"], self.message["seq"])
        return not self.finished and (delta["attempt"], delta["seq"]) > position


class LiveReplies:
    """The tails of the replies in flight, and the repairs that fill their gaps from MongoDB."""

    def __init__(self, store: StoredMessages, send: Send) -> None:
        self.store = store
        self._send = send
        self.tails: dict[str, Tail] = {}
        self._finished: deque[tuple[float, str]] = deque()
        self._repairs: set[asyncio.Task[None]] = set()

    async def snapshot(self, key: ConversationKey) -> list[dict[str, Any]]:
        """The conversation as stored, each reply brought up to its live tail if that is ahead."""
        stored = await self.store.list_messages(key.owner, key.conversation_id)
        messages = []
        for message in stored:
            state = message.to_wire()
            tail = self.tails.get(message.id)
            if tail is not None and tail.version > version_of(state):
                state = tail.state()
            messages.append(state)
        return messages

    def receive(self, event: dict[str, Any]) -> None:
        """Apply one event of the fanout and tell clients what changed for them."""
        try:
            if event["type"] == DELTA:
                self._receive_delta(event)
            else:
                message = Message.model_validate(event["message"]).to_wire()
                self._receive_message(event["type"], message)
        except (KeyError, TypeError, ValueError, ValidationError) as error:
            log.error("dropping a malformed event: %s", error)

    def _receive_delta(self, delta: dict[str, Any]) -> None:
        tail = self.tails.get(delta["messageId"])
        if tail is None:
            tail = self._placeholder(delta)
        if tail.gap or not tail.extend(delta):
            if tail.is_ahead(delta):
                tail.gap.append(delta)
                self._repair_soon(tail)
            return
        event = {field: delta[field] for field in DELTA_FIELDS}
        if "reasoning" in delta:
            event["reasoning"] = delta["reasoning"]
        self._send(tail.message, tail.version, event)

    def _receive_message(self, kind: str, message: dict[str, Any]) -> None:
        if message["from"] == "user":
            self._send(message, version_of(message), {"type": kind, "message": message})
            return
        tail = self.tails.get(message["id"])
        if tail is None or version_of(message) > tail.version:
            self._adopt(message, kind)

    def _adopt(self, message: dict[str, Any], kind: str = UPDATED) -> None:
        """Make `message` the reply's state, tell clients, then apply the deltas that follow.

        Whichever path brought the state (the fanout, a repair, a resynchronisation), a finished
        one is announced by its final event, which no client has had yet: the version of a
        finished state outranks every unfinished one. `kind` names the event of any other state.
        """
        previous = self.tails.get(message["id"])
        tail = self.tails[message["id"]] = Tail(message)
        if tail.finished:
            if previous is not None and previous.is_ahead(message):
                # Clients missed deltas before the end: bring their text up to it first,
                # still unfinished, so the text they rebuilt equals the final one.
                text = unfinished(message)
                self._send(message, version_of(text), {"type": UPDATED, "message": text})
            kind = FINISHED_EVENT[message["status"]]
        self._send(message, tail.version, {"type": kind, "message": message})
        if previous is not None:
            tail.repairing = previous.repairing
            tail.gap = [delta for delta in previous.gap if tail.is_ahead(delta)]
            extended = False
            while tail.gap and tail.extend(tail.gap[0]):
                del tail.gap[0]
                extended = True
            if extended:
                self._send(message, tail.version, {"type": UPDATED, "message": tail.state()})
            if tail.gap:
                self._repair_soon(tail)
        if message["status"] in FINISHED:
            tail.finished_at = time.monotonic()
            self._finished.append((tail.finished_at, message["id"]))

    def _placeholder(self, delta: dict[str, Any]) -> Tail:
        """A reply first seen mid-stream; it takes its real state from MongoDB."""
        unknown = Message(
            id=delta["messageId"],
            owner=delta["owner"],
            conversation_id=delta["conversationId"],
            sender="assistant",
            message="",
            status=Status.CREATED,
            timestamp="",
            seq=0,
        )
        tail = self.tails[delta["messageId"]] = Tail(unknown.to_wire())
        return tail

    def _repair_soon(self, tail: Tail) -> None:
        if not tail.repairing:
            tail.repairing = True
            message = tail.message
            task = asyncio.create_task(
                self._repair(message["owner"], message["conversationId"], message["id"])
            )
            self._repairs.add(task)
            task.add_done_callback(self._repairs.discard)

    async def _repair(self, owner: str, conversation_id: str, message_id: str) -> None:
        """Adopt MongoDB's state of a reply once it is ahead of ours, until no gap is left."""
        about_message(conversation_id, message_id)  # this task's own context: its log lines
        delay, longest = REPAIR_POLL_SECONDS
        deadline = time.monotonic() + REPAIR_GIVE_UP_SECONDS
        while True:
            try:
                stored = await self.store.get_message(owner, conversation_id, message_id)
            except Exception as error:
                log.warning("repairing reply %s from MongoDB failed: %s", message_id, error)
                stored = None
            tail = self.tails.get(message_id)
            if tail is None:
                return
            if stored is not None:
                state = stored.to_wire()
                if version_of(state) > tail.version:
                    self._adopt(state)
                    tail = self.tails[message_id]
            if not tail.gap:
                tail.repairing = False
                return
            if time.monotonic() > deadline:
                log.error(
                    "giving up repairing reply %s; its clients keep what they have", message_id
                )
                del self.tails[message_id]
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def resynchronise(self) -> None:
        """After a broker reconnection: catch up on replies that moved on while we were away."""
        for tail in list(self.tails.values()):
            if tail.finished_at is None:
                self._repair_soon(tail)

    def expire_finished(self) -> None:
        """Forget replies finished long enough ago that no late event can concern them."""
        horizon = time.monotonic() - RETAIN_FINISHED_SECONDS
        while self._finished and self._finished[0][0] < horizon:
            _, message_id = self._finished.popleft()
            tail = self.tails.get(message_id)
            if tail is not None and tail.finished_at is not None and tail.finished_at < horizon:
                del self.tails[message_id]

    async def close(self) -> None:
        """Stop repairing: cancel the repairs under way and wait until they have ended."""
        repairs = list(self._repairs)
        for task in repairs:
            task.cancel()
        await asyncio.gather(*repairs, return_exceptions=True)
