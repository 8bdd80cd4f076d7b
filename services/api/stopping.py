"""Stopping a reply wherever it is being written, and answering with how it ended.

A reply not started yet is ended by the stop request's own write, and the responders are told
its turn is free (a reply asked after it may start). One streaming is flagged in
MongoDB (so a responder that takes it over later stops too) and its responder is told over the
control exchange; the answer then waits for the reply's final event on this instance's relay,
which the responder sends once the final text is stored. If that event does not come within
`STOP_WAIT_SECONDS` (the broker is away, say), the reply is answered as MongoDB has it then.
"""

import asyncio
import contextlib
import logging
from typing import Protocol

import orjson

from services.api.hub import Hub
from shared.events import FINISHED_EVENT, Event, finished_event
from shared.keys import ConversationKey
from shared.schemas import FINISHED, Message, Status, StopRequest, TurnFreed

log = logging.getLogger(__name__)

STOP_WAIT_SECONDS = 5.0


class StopStore(Protocol):
    """The MongoDB writes and reads a stop makes (a ConversationStore has them)."""

    async def request_stop(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None: ...

    async def get_message(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None: ...


class StopRuntime(Protocol):
    """What a stop works with: the API's Runtime, or a fake of it in the unit tests."""

    @property
    def hub(self) -> Hub: ...

    @property
    def conversations(self) -> StopStore: ...

    async def publish_control(self, message: StopRequest | TurnFreed) -> None: ...

    async def announce(self, event: Event) -> None: ...


async def stop_reply(
    runtime: StopRuntime, owner: str, conversation_id: str, message_id: str
) -> Message | None:
    """The reply once stopped (or as it is after the wait); None if the owner has no such reply."""
    async with runtime.hub.subscribe(ConversationKey(owner, conversation_id)) as subscription:
        reply = await _request_stop(runtime, owner, conversation_id, message_id)
        if reply is None or reply.sender != "assistant":
            return None
        if reply.status == Status.STREAMING:
            with contextlib.suppress(TimeoutError):  # then MongoDB has the last word
                async with asyncio.timeout(STOP_WAIT_SECONDS):
                    async for frame in subscription:  # ends early if the relay drops us
                        if (final := _final(frame, message_id)) is not None:
                            return final
            stored = await runtime.conversations.get_message(owner, conversation_id, message_id)
            return stored or reply
    if reply.stopped:
        await runtime.announce(finished_event(reply))
    return reply


async def stop_replies(runtime: StopRuntime, replies: list[Message]) -> None:
    """Stop each reply through the stop path, without waiting: later replies wait for it."""
    for reply in replies:
        await _request_stop(runtime, reply.owner, reply.conversation_id, reply.id)


async def _request_stop(
    runtime: StopRuntime, owner: str, conversation_id: str, message_id: str
) -> Message | None:
    """Flag the reply in MongoDB, or end it there if it had not started, and tell the responders:
    the one writing it stops; one holding the reply asked after it may start that one now."""
    reply = await runtime.conversations.request_stop(owner, conversation_id, message_id)
    if reply is None or reply.sender != "assistant":
        return reply
    if reply.status == Status.STREAMING:
        stop = StopRequest(owner=owner, conversation_id=conversation_id, message_id=message_id)
        await runtime.publish_control(stop)
    elif reply.stopped:
        try:
            await runtime.publish_control(TurnFreed(owner=owner, conversation_id=conversation_id))
        except Exception as error:  # the next reply starts all the same, a few seconds later
            log.warning("telling the responders a turn is free failed: %s", error)
    return reply


def _final(frame: str, message_id: str) -> Message | None:
    """The finished reply, if `frame` is its final event."""
    event = orjson.loads(frame)
    if event.get("type") not in FINISHED_EVENT.values() or event["message"]["id"] != message_id:
        return None
    message = Message.model_validate(event["message"])
    return message if message.status in FINISHED else None
