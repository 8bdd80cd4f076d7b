"""Secrets never reach a log line: the redaction shared.logs applies to every line."""

import pytest

from shared.redaction import redact


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
