"""The body-size guard: 413 before a large body is read, whatever the app would do with it."""

from typing import Any

import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from services.api.body_limit import LINGER_BYTES, BodySizeLimit

LIMIT = 1024
CHUNK = 64 * 1024
FIFTY_MB = 50 * 1024 * 1024


class Upload:
    """A client sending `total` bytes in chunks; counts how many the server pulled."""

    def __init__(self, total: int, chunk: int = CHUNK) -> None:
        self.remaining = total
        self.chunk = chunk
        self.pulled = 0

    async def receive(self) -> Message:
        size = min(self.chunk, self.remaining)
        self.remaining -= size
        self.pulled += size
        return {"type": "http.request", "body": b"x" * size, "more_body": self.remaining > 0}


async def reading_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body like FastAPI does, then answers 200 with its length."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RuntimeError("client went away")
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


async def call(headers: list[tuple[bytes, bytes]], upload: Upload) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def send(message: Message) -> None:
        sent.append(dict(message))

    scope = {"type": "http", "method": "POST", "path": "/chat", "headers": headers}
    await BodySizeLimit(reading_app, LIMIT)(scope, upload.receive, send)
    return sent


async def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read() -> None:
    upload = Upload(FIFTY_MB)
    sent = await call([(b"content-length", str(FIFTY_MB).encode())], upload)
    assert sent[0]["status"] == 413
    assert upload.pulled <= LINGER_BYTES, "only what lingering drops after the answer is read"
    assert orjson.loads(sent[1]["body"]) == {
        "detail": f"the request body is larger than {LIMIT} bytes"
    }


@pytest.mark.parametrize("headers", [[], [(b"content-length", b"10")]])
async def test_a_streamed_body_is_refused_as_soon_as_it_goes_over(
    headers: list[tuple[bytes, bytes]],
) -> None:
    upload = Upload(FIFTY_MB, chunk=512)
    sent = await call(headers, upload)
    assert [message.get("status") for message in sent if "status" in message] == [413]
    assert upload.pulled <= LIMIT + 512 + LINGER_BYTES, "the rest is never read"


async def test_a_body_within_the_limit_reaches_the_app() -> None:
    sent = await call([(b"content-length", str(LIMIT).encode())], Upload(LIMIT, chunk=100))
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == str(LIMIT).encode()


async def test_other_scopes_pass_through() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    async def nothing() -> Message:
        return {}

    async def ignore(message: Message) -> None:
        return None

    await BodySizeLimit(app, LIMIT)({"type": "websocket"}, nothing, ignore)
    assert seen == ["websocket"]
