"""Bad input whatever its bytes: a clear 422 that stays small, on a connection that stays usable.

A lone surrogate (`"\\ud800"`) is valid JSON but not valid Unicode text; a body that is not
UTF-8 is not JSON at all; a 1 MB value is rejected without being repeated whole.
"""

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import pytest

from shared.store.database import Database
from tests.helpers import ApiClient, new_conversation_id

ERROR_BODY_LIMIT = 4096
"""An error names the field and why; it has no reason to repeat more than this."""
MEGABYTE = 1_000_000


async def _counts(database: Database) -> tuple[int, int]:
    return (
        await database["conversations"].count_documents({}),
        await database["messages"].count_documents({}),
    )


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 request on an open connection: (status, body)."""
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines if line)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return int(status_line.split()[1]), body


def _post(host: str, body: bytes) -> bytes:
    return (
        f"POST /chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def _fields_named(body: bytes) -> list[str]:
    details = json.loads(body)["detail"]
    assert isinstance(details, list) and details, body
    assert all(detail["msg"] for detail in details), body
    return [".".join(str(part) for part in detail["loc"]) for detail in details]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"message": "x\\ud800y"}', "body.message"),
        (b'{"message": "\\udfff"}', "body.message"),
        (b'{"message": "hello", "conversationId": "a\\ud800"}', "body.conversationId"),
        (b'{"message": "x\xed\xa0\x80y"}', "body.message"),
        (b'{"message": "x\xffy"}', "body"),
    ],
    ids=["escaped-high", "escaped-low", "in-conversation-id", "encoded-surrogate", "not-utf8"],
)
async def test_text_that_is_not_unicode_is_422_and_the_connection_stays_usable(
    api: ApiClient, database: Database, raw: bytes, field: str
) -> None:
    """A 422 naming the field, nothing stored, and the next request on the same connection works."""
    url = urlsplit(api.base_url)
    assert url.hostname is not None and url.port is not None
    before = await _counts(database)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        status, body = await _exchange(reader, writer, _post(url.netloc, raw))
        assert status == 422, body
        assert any(name.startswith(field) for name in _fields_named(body)), body
        ping = f"GET /healthz HTTP/1.1\r\nHost: {url.netloc}\r\n\r\n".encode()
        assert (await _exchange(reader, writer, ping))[0] == 200
    finally:
        writer.close()
    assert await _counts(database) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"message": "x" * MEGABYTE}, "body.message"),
        ({"message": ["x" * MEGABYTE]}, "body.message"),
        ({"message": "hello", "conversationId": "c" * MEGABYTE}, "body.conversationId"),
    ],
    ids=["long-message", "long-list", "long-conversation-id"],
)
async def test_a_huge_value_is_not_repeated_whole(
    api: ApiClient, body: dict[str, Any], field: str
) -> None:
    response = await api.http.post("/chat", json=body)
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < ERROR_BODY_LIMIT, response.text[:300]
    assert any(name == field for name in _fields_named(response.content))


async def test_a_huge_idempotency_key_is_refused_with_a_small_answer(
    api: ApiClient, database: Database
) -> None:
    """Uvicorn (httptools) takes a 1 MB header whole, so the key's 200-character limit refuses
    it: a 422 naming the header, like any other field, not a 431 for the headers' size.
    """
    conversation_id = new_conversation_id()
    response = await api.http.post(
        "/chat",
        json={"message": "hello", "conversationId": conversation_id},
        headers={"Idempotency-Key": "k" * MEGABYTE},
    )
    assert response.status_code == 422, response.text[:300]
    assert len(response.content) < ERROR_BODY_LIMIT, response.text[:300]
    assert _fields_named(response.content) == ["header.idempotency-key"]
    assert await database["messages"].count_documents({"conversationId": conversation_id}) == 0
