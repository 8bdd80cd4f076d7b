"""A WebSocket subscriber that keeps reading through a fault, as a browser would."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from shared.events import FINISHED_EVENT, UPDATED
from shared.schemas import FINISHED, Message
from tests.clients import Rebuilder
from tests.helpers import eventually


class LiveSubscriber(Rebuilder):
    """A WebSocket subscriber whose frames are read and checked by a background task.

    tests/clients.Subscriber reads only while a test waits on it; during a fault a test waits
    on other things (the broker, a process), so here a task keeps reading, as a browser would.
    A contract violation found by the Rebuilder is kept and raised by `check`.
    """

    def __init__(self, websocket: ClientConnection, conversation_id: str) -> None:
        super().__init__(conversation_id)
        self.websocket = websocket
        self.error: BaseException | None = None
        self.close_code: int | None = None
        self.closed_at: float | None = None
        self.frames = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls, ws_url: str, conversation_id: str, timeout: float = 20.0
    ) -> AsyncIterator[Self]:
        url = f"{ws_url}/conversations/{conversation_id}/stream"
        async with connect(url, max_size=None, open_timeout=timeout) as websocket:
            subscriber = cls(websocket, conversation_id)
            subscriber._task = asyncio.create_task(subscriber._pump())
            try:
                await subscriber.wait(lambda s: s.snapshot is not None, timeout, "the snapshot")
                yield subscriber
            finally:
                subscriber._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await subscriber._task

    async def _pump(self) -> None:
        """Read until the server closes; after a contract violation, read without applying."""
        try:
            async for raw in self.websocket:
                self.frames += 1
                if self.error is None:
                    try:
                        self.apply(orjson.loads(raw))
                    except Exception as error:  # a contract violation, or a bad frame
                        self.error = error
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.websocket.close_code
            self.closed_at = time.monotonic()

    @property
    def connected(self) -> bool:
        return self.closed_at is None

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(
                f"subscriber of {self.conversation_id}: {self.error}"
            ) from self.error

    async def wait(
        self, condition: Callable[[Self], bool], timeout: float = 20.0, what: str = "condition"
    ) -> Self:
        def ready() -> bool:
            self.check()
            if condition(self):
                return True
            assert self.connected, (
                f"subscriber of {self.conversation_id} was disconnected "
                f"(code {self.close_code}) while waiting for {what}"
            )
            return False

        await eventually(ready, timeout, interval=0.02, what=f"subscriber: {what}")
        return self

    async def finished(self, message_id: str, timeout: float = 30.0) -> Message:
        await self.wait(lambda s: s.is_finished(message_id), timeout, f"{message_id} to finish")
        return self.messages[message_id]

    async def streaming(self, message_id: str, seq: int = 3, timeout: float = 20.0) -> Message:
        """Wait until the reply is mid-stream: at least `seq` deltas of an unfinished attempt."""

        def mid_stream(s: Self) -> bool:
            message = s.get(message_id)
            assert message is None or message.status not in FINISHED, (
                f"{message_id} finished before the fault could be injected: {message}"
            )
            return message is not None and message.seq >= seq

        await self.wait(mid_stream, timeout, f"{message_id} to stream {seq} deltas")
        return self.messages[message_id]

    def attempt(self, message_id: str) -> int:
        message = self.get(message_id)
        return 0 if message is None else message.attempt

    def restarts(self, message_id: str) -> list[dict[str, Any]]:
        """`message.updated` frames that restarted the reply from seq 0 (a new attempt)."""
        return [
            event
            for event in self.events_of(message_id)
            if event["type"] == UPDATED and event["message"]["seq"] == 0
        ]

    def events_after_final(self, message_id: str) -> list[dict[str, Any]]:
        events = self.events_of(message_id)
        finals = [
            index for index, event in enumerate(events) if event["type"] in FINISHED_EVENT.values()
        ]
        return events[finals[0] + 1 :] if finals else []
