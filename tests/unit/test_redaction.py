"""Secrets never reach a log line: the redaction applied to every log handler."""

import io
import logging

import pytest

from shared.redaction import RedactSecrets, redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "GET /conversations/c1/stream?access_token=eyJ.abc.def HTTP/1.1",
            "GET /conversations/c1/stream?access_token=*** HTTP/1.1",
        ),
        ("/stream?x=1&access_token=eyJ.a.b&y=2", "/stream?x=1&access_token=***&y=2"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: Bearer ***"),
        ("amqp://guest:hunter2@rabbit:5672/", "amqp://guest:***@rabbit:5672/"),
        ("key sk-proj-abcdefghijkl rejected", "key *** rejected"),
        ("/conversations/c1/messages?limit=20", "/conversations/c1/messages?limit=20"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_uvicorn_style_access_records_keep_their_shape() -> None:
    """uvicorn's access formatter unpacks the record's arguments: they stay a 5-tuple."""
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.addFilter(RedactSecrets())
    logger = logging.getLogger("test.redaction.access")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(
            '%s - "%s %s HTTP/%s" %d',
            "127.0.0.1:5000",
            "GET",
            "/conversations/c1/stream?access_token=eyJ.secret.sig",
            "1.1",
            101,
        )
    finally:
        logger.removeHandler(handler)
    line = output.getvalue()
    assert "eyJ.secret.sig" not in line
    assert (
        line.strip()
        == '127.0.0.1:5000 - "GET /conversations/c1/stream?access_token=*** HTTP/1.1" 101'
    )
