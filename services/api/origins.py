"""Which browser origins may use the API: CORS_ORIGINS, plus the API's own for WebSockets.

Browsers send `Origin` on every WebSocket handshake and do not apply CORS to it, so the
WebSocket route checks it itself: a page on another site must not open a user's stream.
Clients that are not browsers send no `Origin` and are let through (their token still counts).
"""

from starlette.requests import HTTPConnection

ANY = "*"


def websocket_origin_allowed(connection: HTTPConnection, allowed: list[str]) -> bool:
    origin = connection.headers.get("origin")
    if origin is None:
        return True
    origin = origin.rstrip("/").lower()
    if ANY in allowed or origin in (item.lower() for item in allowed):
        return True
    host = connection.headers.get("host", "").lower()
    return bool(host) and origin in (f"http://{host}", f"https://{host}")
