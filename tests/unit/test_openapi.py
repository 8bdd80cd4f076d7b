"""The OpenAPI schema tells the truth: every status the app answers is documented, with its body.

The app runs in-process on fake backends: one where MongoDB is away (every store call fails, as
the driver would), one where it is empty (every read finds nothing). Each request's answer must
be listed for its route and method, and its body must have the documented shape.
"""

import re
import unicodedata
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from pymongo.errors import ServerSelectionTimeoutError
from starlette.routing import Mount
from starlette.testclient import TestClient, WebSocketDenialResponse

from services.api.app import create_app
from services.api.auth import OpenAccess, TokenVerifier
from services.api.hub import Hub
from shared.schemas import NOT_ONLY_WHITESPACE, ChatRequest, Message
from shared.settings import Settings
from tests.tokens import TEST_SECRET


class DatabaseDown:
    """Any backend, any method: fails as the driver does when MongoDB is away."""

    async def ready(self) -> bool:
        return False

    def __getattr__(self, name: str) -> "DatabaseDown":
        return self

    def __getitem__(self, name: str) -> "DatabaseDown":
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise ServerSelectionTimeoutError("no MongoDB (test)")


class NothingStored:
    """Any backend, any method: finds nothing (a list method, an empty list); a real hub."""

    def __init__(self) -> None:
        self.hub = Hub(self, capacity=16, deaf_after=10.0)

    async def ready(self) -> bool:
        return True

    async def list_conversations(self, *args: Any) -> tuple[list[Any], None]:
        return [], None

    async def unfinished_replies(self, *args: Any) -> list[Any]:
        return []

    async def list_messages(self, owner: str, conversation_id: str) -> list[Message]:
        return []

    async def get_message(
        self, owner: str, conversation_id: str, message_id: str
    ) -> Message | None:
        return None

    async def count_documents(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def __getattr__(self, name: str) -> "NothingStored":
        return self

    def __getitem__(self, name: str) -> "NothingStored":
        return self

    async def __call__(self, *args: Any, **kwargs: Any) -> None:
        return None


Request = tuple[str, str, str, dict[str, Any]]
"""(method, route template, path, httpx keyword arguments)."""

CHAT = "/chat"
MESSAGES = "/conversations/{conversation_id}/messages"
MESSAGE = "/conversations/{conversation_id}/messages/{message_id}"
STOP = "/conversations/{conversation_id}/messages/{message_id}/stop"
CONVERSATION = "/conversations/{conversation_id}"
CONVERSATIONS = "/conversations"
REGENERATE = "/conversations/{conversation_id}/messages/{message_id}/regenerate"

OVER_THE_BODY_LIMIT = {"content": b"x" * (Settings.model_fields["max_body_bytes"].default + 1)}

REQUESTS: list[Request] = [
    ("post", CHAT, CHAT, {"json": {"message": "hello", "conversationId": "c1"}}),
    ("post", CHAT, CHAT, {"json": {"message": "\f"}}),
    ("post", CHAT, CHAT, {"json": {"message": "x" * 40_000}}),
    ("post", CHAT, CHAT, {"json": {"message": "hi", "conversationId": "a b"}}),
    ("post", CHAT, CHAT, {"content": b'{"message": "x\\ud800"}'}),
    ("post", CHAT, CHAT, {"content": b'{"message": "\xff"}'}),
    ("post", CHAT, CHAT, {"content": b"{"}),
    ("post", CHAT, CHAT, {"json": {"message": "hi"}, "headers": {"Idempotency-Key": ""}}),
    ("get", MESSAGES, "/conversations/c1/messages", {}),
    ("get", MESSAGES, "/conversations/a.b/messages", {}),
    ("get", MESSAGE, "/conversations/c1/messages/m1", {}),
    ("get", MESSAGE, f"/conversations/c1/messages/{'m' * 65}", {}),
    ("post", STOP, "/conversations/c1/messages/m1/stop", {}),
    ("post", STOP, "/conversations/a.b/messages/m1/stop", {}),
    ("get", CONVERSATION, "/conversations/c1", {}),
    ("patch", CONVERSATION, "/conversations/c1", {"json": {"title": "\u3000"}}),
    ("patch", CONVERSATION, "/conversations/c1", {"json": {"title": "renamed"}}),
    ("delete", CONVERSATION, "/conversations/c1", {}),
    ("get", CONVERSATIONS, CONVERSATIONS, {}),
    ("get", CONVERSATIONS, CONVERSATIONS, {"params": {"limit": 0}}),
    ("get", CONVERSATIONS, CONVERSATIONS, {"params": {"before": "not-a-cursor"}}),
    ("post", REGENERATE, "/conversations/c1/messages/m1/regenerate", {}),
    ("post", REGENERATE, "/conversations/c1/messages/m1/regenerate", OVER_THE_BODY_LIMIT),
    ("post", STOP, "/conversations/c1/messages/m1/stop", OVER_THE_BODY_LIMIT),
    ("post", CHAT, CHAT, OVER_THE_BODY_LIMIT),
    ("patch", CONVERSATION, "/conversations/c1", OVER_THE_BODY_LIMIT),
    ("post", CHAT, CHAT, {"json": {"message": "hi", "parentId": "m1"}}),
    ("get", "/readyz", "/readyz", {}),
    ("get", "/healthz", "/healthz", {}),
]


@pytest.fixture(params=[DatabaseDown, NothingStored], ids=["database-down", "nothing-stored"])
async def app(request: pytest.FixtureRequest) -> FastAPI:
    return create_app(request.param(), Settings(_env_file=None), OpenAccess())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http


def conforms(value: Any, schema: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Enough of JSON Schema for this API's bodies: $ref, anyOf, types, required, items."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return conforms(value, spec["components"]["schemas"][name], spec)
    if "anyOf" in schema:
        return any(conforms(value, option, spec) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind == "object":
        properties = schema.get("properties", {})
        return (
            isinstance(value, dict)
            and all(key in value for key in schema.get("required", []))
            and all(
                conforms(value[key], properties[key], spec) for key in properties if key in value
            )
        )
    if kind == "array":
        return isinstance(value, list) and all(
            conforms(item, schema.get("items", {}), spec) for item in value
        )
    if "enum" in schema or "const" in schema:
        return value in schema.get("enum", [schema.get("const")])
    checks = {"string": str, "integer": int, "boolean": bool, "null": type(None)}
    return kind not in checks or isinstance(value, checks[kind])


@pytest.mark.parametrize(("method", "route", "path", "options"), REQUESTS)
async def test_every_answer_is_documented_with_its_body(
    app: FastAPI,
    client: httpx.AsyncClient,
    method: str,
    route: str,
    path: str,
    options: dict[str, Any],
) -> None:
    spec = app.openapi()
    response = await client.request(method, path, **options)
    documented = spec["paths"][route][method]["responses"]
    status = str(response.status_code)
    assert status in documented, f"{method} {route} answered {status}: {response.text[:200]}"
    schema = documented[status].get("content", {}).get("application/json", {}).get("schema")
    assert schema is not None, f"{method} {route} {status} has no documented body"
    assert conforms(response.json(), schema, spec), (status, response.text[:300], schema)


def test_the_whitespace_pattern_is_the_rule_the_app_applies() -> None:
    """For every character: alone, the schema's pattern refuses it exactly when the app does."""
    pattern = re.compile(ChatRequest.model_json_schema()["properties"]["message"]["pattern"])
    assert pattern.pattern == NOT_ONLY_WHITESPACE
    for code in range(0x110000):
        if unicodedata.category(chr(code)) == "Cs":
            continue  # lone surrogates are refused for another reason
        text = chr(code) * 2
        assert bool(pattern.search(text)) == bool(text.strip()), hex(code)


@pytest.mark.parametrize(
    "text",
    ["\f", "\x1c", "\x85", "\u00a0", "\u2007", "\u3000", " \t\n\r\v", "a", " a ", "\u200b"],
)
async def test_the_app_answers_as_the_schema_says(
    app: FastAPI, client: httpx.AsyncClient, text: str
) -> None:
    """Text the pattern refuses is a 422 on `message`; text it accepts gets past validation."""
    pattern = re.compile(
        app.openapi()["components"]["schemas"]["ChatRequest"]["properties"]["message"]["pattern"]
    )
    response = await client.post(CHAT, json={"message": text})
    refused = response.status_code == 422 and any(
        error["loc"] == ["body", "message"] for error in response.json()["detail"]
    )
    assert refused == (pattern.search(text) is None), response.text


OPEN_ROUTES = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/"),
    ("GET", "/static"),
    ("GET", "/docs"),
    ("GET", "/openapi.json"),
}
"""What a request without a token may use when auth is on: the contract's /healthz, /readyz,
/metrics and the page's files, and, deliberately, the API's description (README "Users")."""
STATIC_FILE = "/app.css"
WEBSOCKET = "WEBSOCKET"


def every_route(app: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every route the app serves; a mount as GET, the stream as WEBSOCKET."""
    routes = []
    for route in iter_route_contexts(app.routes):
        assert route.path is not None
        if isinstance(route.original_route, Mount):
            routes.append(("GET", route.path))
        else:
            methods = route.methods or {WEBSOCKET}
            routes += [(method, route.path) for method in methods if method != "HEAD"]
    return routes


def example_path(path: str) -> str:
    path = path.replace("{conversation_id}", "c1").replace("{message_id}", "m1")
    return path + STATIC_FILE if path == "/static" else path


def test_only_the_open_routes_answer_without_a_token() -> None:
    """With auth on, every other route, WebSocket included, is a 401 with its challenge, and
    each 401 is documented with its `WWW-Authenticate` header."""
    backend: Any = NothingStored()
    verifier = TokenVerifier(TEST_SECRET, None, None, leeway=30.0)
    app = create_app(backend, Settings(_env_file=None), verifier)
    spec = app.openapi()
    http = TestClient(app)
    answered = set()
    for method, path in every_route(app):
        if method == WEBSOCKET:
            with (
                pytest.raises(WebSocketDenialResponse) as denied,
                http.websocket_connect(example_path(path)),
            ):
                pass
            assert denied.value.status_code == 401
            continue
        response = http.request(method, example_path(path))
        if response.status_code != 401:
            assert response.status_code == 200, (method, path, response.status_code)
            answered.add((method, path))
            continue
        assert response.headers["www-authenticate"].startswith('Bearer realm="chat"')
        documented = spec["paths"][path][method.lower()]["responses"]["401"]
        assert documented["headers"]["WWW-Authenticate"]["required"], (method, path)
    assert answered == OPEN_ROUTES
