"""The paced SSE response: tokens on absolute deadlines, then finish, error, abort or hang."""

import asyncio
import logging
import time
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from mock_openai.directives import Ending

_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


class StreamAbortError(Exception):
    """Raised to make uvicorn drop the connection mid-body, as a crashed upstream would."""


def drop_abort_logs(record: logging.LogRecord) -> bool:
    """Log filter for uvicorn's error logger: a scripted abort is not a server error.

    Neither is a hung stream that uvicorn cancels at shutdown.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, StreamAbortError | asyncio.CancelledError)


@dataclass(frozen=True, slots=True)
class TokenStream:
    """ASGI response that writes prebuilt chunks and timestamps each token as it leaves.

    The first `reasoning` chunks of `tokens` are reasoning, timed into `reasoning_emitted`;
    the content tokens are timed into `emitted`. `tail` ends a stream that finishes or errs.
    """

    head: bytes
    tokens: list[bytes]
    tail: bytes
    delay_s: float
    ending: Ending
    emitted: list[float]
    reasoning: int
    reasoning_emitted: list[float]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
        await send({"type": "http.response.body", "body": self.head, "more_body": True})
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            if not await self._send_tokens(send, gone):
                return
            if self.ending in ("finish", "error"):
                await send({"type": "http.response.body", "body": self.tail})
            elif self.ending == "hang":
                await gone
            else:
                raise StreamAbortError
        finally:
            gone.cancel()

    async def _send_tokens(self, send: Send, gone: asyncio.Future[None]) -> bool:
        """Send every token on schedule; False if the client left first."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for index, body in enumerate(self.tokens, 1):
            # Absolute deadlines keep the rate from drifting; sleep(0) still yields when late.
            await asyncio.sleep(max(0.0, start + index * self.delay_s - loop.time()))
            if gone.done():
                return False
            (self.emitted if index > self.reasoning else self.reasoning_emitted).append(time.time())
            await send({"type": "http.response.body", "body": body, "more_body": True})
        return True


async def _disconnected(receive: Receive) -> None:
    """Finish when the client hangs up (the request body has already been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
