"""Refuse request bodies over MAX_BODY_BYTES with `413` before they are read whole.

A declared `Content-Length` over the limit is refused before a byte of the body is read; a
body that streams in without one (or lies about it) is counted chunk by chunk and refused the
moment it goes over, so at most one chunk past the limit is ever held in memory. Then, like
nginx's lingering close, a little more of it is read and thrown away before the connection
closes, so that the client reads the 413 instead of a reset.
"""

import asyncio
import contextlib
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics import REFUSED_BODY

TOO_LARGE = 413
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 1.0


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            await _linger(receive)
            return
        received = 0
        refused = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 has been sent; whatever the app says after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # the app's own failure; after a 413 it only failed to read the rest
        if refused:
            await _linger(receive)

    async def _refuse(self, send: Send) -> None:
        REFUSED_BODY.inc()
        body = orjson.dumps({"detail": f"the request body is larger than {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _linger(receive: Receive) -> None:
    """Read and drop up to LINGER_BYTES more of a refused body, for LINGER_SECONDS at most."""
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER_SECONDS):
            while dropped < LINGER_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                dropped += len(message.get("body", b""))


def _content_length(scope: Scope) -> int | None:
    headers: Any = scope.get("headers", [])
    for name, value in headers:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None
