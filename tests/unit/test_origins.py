"""Which Origin may open a WebSocket: listed ones, the API's own, and non-browsers."""

import pytest
from starlette.requests import HTTPConnection

from services.api.origins import websocket_origin_allowed


def handshake(headers: dict[str, str]) -> HTTPConnection:
    raw = [(name.encode(), value.encode()) for name, value in headers.items()]
    return HTTPConnection({"type": "websocket", "headers": raw, "path": "/", "query_string": b""})


@pytest.mark.parametrize(
    ("headers", "allowed", "admitted"),
    [
        ({"host": "api.example:8000"}, [], True),
        ({"host": "api.example:8000", "origin": "http://api.example:8000"}, [], True),
        ({"host": "api.example:8000", "origin": "https://API.example:8000"}, [], True),
        ({"host": "api.example:8000", "origin": "https://evil.example"}, [], False),
        ({"host": "api.example:8000", "origin": "http://api.example:9000"}, [], False),
        ({"host": "api.example", "origin": "https://app.example"}, ["https://app.example"], True),
        ({"host": "api.example", "origin": "https://app.example/"}, ["https://app.example"], True),
        ({"host": "api.example", "origin": "null"}, ["https://app.example"], False),
        ({"host": "api.example", "origin": "https://any.example"}, ["*"], True),
    ],
)
def test_websocket_origins(headers: dict[str, str], allowed: list[str], admitted: bool) -> None:
    assert websocket_origin_allowed(handshake(headers), allowed) is admitted
