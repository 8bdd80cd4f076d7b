"""Small test helpers: deadline-bound waiting, prompts the mock understands, HTTP clients."""

import asyncio
import inspect
import json
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload
from urllib.parse import quote

import httpx

from mock_openai import reply_tokens
from shared.schemas import FINISHED, ChatAccepted, ConversationMessages, Message
from shared.store.database import Database

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None],
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    what: str = "the condition",
) -> Any:
    """Poll `check` until it returns something truthy and return that, or fail at the deadline.

    `check` may be a plain function or a coroutine function. The failure names `what` and the
    last value seen, so a hung system fails with a reason.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        last = await result if inspect.isawaitable(result) else result
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"
            )
        await asyncio.sleep(interval)


def new_conversation_id() -> str:
    """A fresh id per test, so tests sharing the processes never see each other's data."""
    return f"t-{uuid.uuid4().hex}"


def prompt(label: str, **directives: int | float | str) -> str:
    """A unique user message with `[mock ...]` directives (unique, so the mock's attempt is 0).

    Values are percent-encoded, so a `text=` may hold any text: spaces, `]`, markup.
    """
    options = " ".join(f"{name}={quote(str(value), safe='')}" for name, value in directives.items())
    head = f"[mock {options}] " if options else ""
    return f"{head}{label} {uuid.uuid4().hex}"


def expected_reply(user_text: str, tokens: int, attempt: int = 0) -> str:
    """The exact text the mock streams for `user_text` (the last user message it was sent)."""
    return "".join(reply_tokens(user_text, attempt, tokens))


class ApiClient:
    """The REST side of the contract as a user calls it, validated with the project's schemas."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @property
    def base_url(self) -> str:
        return str(self.http.base_url).rstrip("/")

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1)

    async def post_chat(self, message: str, conversation_id: str | None = None) -> ChatAccepted:
        body: dict[str, str] = {"message": message}
        if conversation_id is not None:
            body["conversationId"] = conversation_id
        response = await self.http.post("/chat", json=body)
        assert response.status_code == 202, response.text
        return ChatAccepted.model_validate(response.json())

    async def conversation(self, conversation_id: str) -> ConversationMessages:
        response = await self.http.get(f"/conversations/{conversation_id}/messages")
        assert response.status_code == 200, response.text
        return ConversationMessages.model_validate(response.json())

    async def conversation_status(self, conversation_id: str) -> int:
        response = await self.http.get(f"/conversations/{conversation_id}/messages")
        return response.status_code

    async def message(self, conversation_id: str, message_id: str) -> Message:
        response = await self.http.get(f"/conversations/{conversation_id}/messages/{message_id}")
        assert response.status_code == 200, response.text
        return Message.model_validate(response.json())

    async def finished(
        self, conversation_id: str, message_id: str, timeout: float = DEFAULT_TIMEOUT
    ) -> Message:
        """Poll the message, as a client without a WebSocket would, until it is finished."""

        async def done() -> Message | None:
            message = await self.message(conversation_id, message_id)
            return message if message.status in FINISHED else None

        return await eventually(done, timeout, what=f"message {message_id} to finish")

    async def ask(
        self, message: str, conversation_id: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> tuple[ChatAccepted, Message]:
        """Post a message and wait for its reply to finish."""
        accepted = await self.post_chat(message, conversation_id)
        reply = await self.finished(accepted.conversation_id, accepted.message_id, timeout)
        return accepted, reply


async def leftovers(database: Database, conversation_id: str) -> list[dict[str, Any]]:
    """Every document of any collection that still names the conversation."""
    found = []
    for name in await database.list_collection_names():
        async for document in database[name].find({"conversationId": conversation_id}):
            found.append({"collection": name, **document})
    return found


class MockClient:
    """The mock model's own log of what it was asked."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def requests(self, contains: str) -> list[dict[str, Any]]:
        response = await self.http.get("/_mock/requests", params={"contains": contains})
        assert response.status_code == 200, response.text
        records: list[dict[str, Any]] = response.json()
        return records


def rabbitmq_table(vhost: str, command: str, *columns: str) -> list[dict[str, Any]]:
    """One `rabbitmqctl list_*` table of a virtual host, as the broker itself reports it."""
    output = subprocess.run(
        ["rabbitmqctl", "-q", command, "-p", vhost, *columns, "--formatter", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    rows: list[dict[str, Any]] = json.loads(output)
    return rows


def queue_stats(vhost: str, queue: str) -> dict[str, int]:
    """Ready and unacknowledged messages and consumers of `queue` (a few seconds late for a
    quorum queue: wait on them with `eventually`)."""
    columns = ("messages_ready", "messages_unacknowledged", "consumers")
    for row in rabbitmq_table(vhost, "list_queues", "name", *columns):
        if row["name"] == queue:
            return {column: int(row[column]) for column in columns}
    raise AssertionError(f"queue {queue} not found in vhost {vhost}")


async def queue_settled(vhost: str, queue: str = "chat-message") -> bool:
    """Whether every job of `queue` was acknowledged: none waiting, none in a responder's hands."""
    stats = await asyncio.to_thread(queue_stats, vhost, queue)
    return stats["messages_ready"] == 0 and stats["messages_unacknowledged"] == 0
