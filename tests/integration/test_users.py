"""Users (contract "Users"): every route and the WebSocket need a valid bearer token, and each
user sees only their own conversations, on any API instance.
"""

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.redaction import HIDDEN
from shared.store.database import Database
from tests.clients import Subscriber
from tests.helpers import ApiClient, eventually, new_conversation_id, prompt
from tests.infra import Deployment, deployment, rabbitmq, service_env
from tests.tokens import AUDIENCE, AUTH_ENV, ISSUER, TEST_SECRET, hs256, new_user, user_token

OPEN_ROUTES = {"/healthz", "/readyz", "/metrics"}
"""The open routes in the OpenAPI (the page, its files, /docs and /openapi.json are not in it;
tests/unit/test_openapi.py pins the whole set)."""
OPEN_FILES = ("/", "/static/app.css", "/docs", "/openapi.json")
OTHER_SECRET = "a-different-secret-of-the-same-length-0123"

# Headers are made when the test runs, not when it is collected: in a suite that runs longer than
# a token's lifetime every token would be refused as expired, whatever else is wrong with it.
# Each is for a user (`sub`) where the token has one: refused, it must act for nobody.
BAD_TOKENS: dict[str, tuple[Callable[[str], dict[str, str]], str]] = {
    "no token": (lambda sub: {}, "missing_token"),
    "not bearer": (lambda sub: {"authorization": "Basic dXNlcjpwYXNz"}, "malformed_token"),
    "malformed": (lambda sub: {"authorization": "Bearer not.a.jwt"}, "malformed_token"),
    "bad signature": (
        lambda sub: {
            "authorization": f"Bearer {hs256(sub, OTHER_SECRET, iss=ISSUER, aud=AUDIENCE)}"
        },
        "bad_signature",
    ),
    "expired": (lambda sub: bearer(sub, ttl=-3600), "expired_token"),
    "wrong audience": (lambda sub: bearer(sub, aud="another-api"), "wrong_audience"),
    "wrong issuer": (lambda sub: bearer(sub, iss="https://evil.test"), "wrong_issuer"),
}


def bearer(sub: str, **claims: Any) -> dict[str, str]:
    return {"authorization": f"Bearer {user_token(sub, **claims)}"}


@pytest.fixture(scope="session")
async def auth_http(auth_stack: Deployment) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One plain HTTP client per API instance of the authenticated stack."""
    clients = [httpx.AsyncClient(base_url=url, timeout=10.0) for url in auth_stack.api_urls]
    try:
        yield clients
    finally:
        for client in clients:
            await client.aclose()


def as_user(http: httpx.AsyncClient, sub: str) -> ApiClient:
    return ApiClient(httpx.AsyncClient(base_url=http.base_url, timeout=10.0, headers=bearer(sub)))


async def protected_operations(http: httpx.AsyncClient) -> list[tuple[str, str]]:
    schema = (await http.get("/openapi.json")).json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        if path not in OPEN_ROUTES
        for method in item
    ]


def concrete(path: str, conversation_id: str, message_id: str = "m-1") -> str:
    path = path.replace("{conversation_id}", conversation_id)
    return re.sub(r"\{[a-z_]+\}", message_id, path)


async def stored_documents(database: Database) -> int:
    """Every document a request could leave (limit bookkeeping aside)."""
    total = 0
    for name in await database.list_collection_names():
        if name not in {"rate_limits", "websockets"}:
            total += await database[name].count_documents({})
    return total


@pytest.mark.parametrize("case", BAD_TOKENS.keys())
async def test_every_route_refuses_a_bad_token_and_stores_and_publishes_nothing(
    auth_http: list[httpx.AsyncClient], auth_database: Database, case: str
) -> None:
    """Every route of the owner's conversation, with a bad token naming the owner: each is a
    401 that stores nothing, and the owner's stream shows nothing of it (the first event after
    them is the owner's next accepted post's, `Subscriber.until_only`)."""
    make_headers, error = BAD_TOKENS[case]
    owner = new_user()
    headers = make_headers(owner)
    http = as_user(auth_http[0], owner)
    mine, _ = await http.ask(prompt("mine"))
    conversation_id = mine.conversation_id
    operations = await protected_operations(http.http)
    assert ("POST", "/chat") in operations
    before = await stored_documents(auth_database)
    async with Subscriber.open(
        ws_base(auth_http[1]), conversation_id, headers=bearer(owner)
    ) as subscriber:
        for method, path in operations:
            body = {"message": prompt("refused"), "conversationId": conversation_id, "title": "t"}
            url = concrete(path, conversation_id, mine.message_id)
            response = await auth_http[0].request(method, url, json=body, headers=headers)
            where = f"{method} {path} with {case}"
            assert response.status_code == 401, f"{where}: {response.status_code} {response.text}"
            assert response.headers["www-authenticate"].startswith("Bearer"), where
            assert response.json()["error"] == error, where
            assert TEST_SECRET not in response.text
        assert await stored_documents(auth_database) == before
        accepted = await http.post_chat(prompt("after the refusals", tokens=1), conversation_id)
        await subscriber.until_only([accepted])


async def test_a_valid_token_is_served(auth_http: list[httpx.AsyncClient]) -> None:
    alice = as_user(auth_http[0], new_user())
    accepted, reply = await alice.ask(prompt("hello"))
    assert reply.status == "completed"
    assert (await alice.conversation(accepted.conversation_id)).messages[-1].id == reply.id


async def test_open_routes_need_no_token(auth_http: list[httpx.AsyncClient]) -> None:
    for path in (*OPEN_ROUTES, *OPEN_FILES):
        assert (await auth_http[0].get(path)).status_code == 200, path


def ws_base(http: httpx.AsyncClient) -> str:
    return str(http.base_url).rstrip("/").replace("http://", "ws://", 1)


def ws_url(http: httpx.AsyncClient, conversation_id: str, query: str = "") -> str:
    return f"{ws_base(http)}/conversations/{conversation_id}/stream{query}"


@pytest.mark.parametrize("case", BAD_TOKENS.keys())
async def test_the_stream_refuses_a_bad_token_at_the_handshake(
    auth_http: list[httpx.AsyncClient], case: str
) -> None:
    make_headers, error = BAD_TOKENS[case]
    headers = make_headers(new_user())
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(auth_http[1], new_conversation_id()), additional_headers=headers):
            pass
    response = refused.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert f'"error":"{error}"' in response.body.decode()


async def test_the_stream_takes_the_token_from_the_header_or_the_query(
    auth_http: list[httpx.AsyncClient],
) -> None:
    user = new_user()
    conversation_id = new_conversation_id()
    query = f"?access_token={user_token(user)}"
    async with connect(ws_url(auth_http[0], conversation_id, query)) as websocket:
        assert '"type":"snapshot"' in await websocket.recv()
    async with Subscriber.open(
        ws_url(auth_http[1], "").rsplit("/conversations", 1)[0],
        conversation_id,
        headers=bearer(user),
    ) as subscriber:
        assert subscriber.snapshot == []
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url(auth_http[0], conversation_id, "?access_token=garbage")):
            pass
    assert refused.value.response.status_code == 401


@pytest.fixture(scope="module")
def debug_stack(log_dir: Path, mongodb_url: str, model_url: str) -> Iterator[Deployment]:
    """One API with users at LOG_LEVEL=DEBUG: the level at which uvicorn prints every
    WebSocket's URL, query string and all."""
    with rabbitmq("chat-test-debug") as own_broker:
        env = {**service_env(mongodb_url, own_broker, model_url), **AUTH_ENV, "LOG_LEVEL": "DEBUG"}
        with deployment("debug", log_dir, env, own_broker, responders=0, apis=1) as running:
            yield running


async def test_a_token_in_the_url_never_reaches_a_log(debug_stack: Deployment) -> None:
    base = debug_stack.api_urls[0].replace("http://", "ws://", 1)
    token = user_token(new_user())
    conversation_id = new_conversation_id()
    async with connect(f"{base}/conversations/{conversation_id}/stream?access_token={token}"):
        pass
    with pytest.raises(InvalidStatus):
        async with connect(f"{base}/conversations/bad id!/stream?access_token={token}"):
            pass

    def logs() -> str:
        return "".join(
            process.log_path.read_text(errors="replace") for process in debug_stack.stack.processes
        )

    printed = f"/conversations/{conversation_id}/stream?access_token={HIDDEN}"
    await eventually(lambda: printed in logs(), what="the stream's URL, redacted, in the log")
    assert token.rsplit(".", 1)[1] not in logs(), "the token's signature reached a log"


async def test_the_stream_closes_with_4401_when_the_token_expires(
    auth_http: list[httpx.AsyncClient],
) -> None:
    user = new_user()
    started = time.monotonic()
    async with connect(
        ws_url(auth_http[0], new_conversation_id()), additional_headers=bearer(user, ttl=2)
    ) as websocket:
        assert '"type":"snapshot"' in await websocket.recv()
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(20):
                while True:
                    await websocket.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    assert time.monotonic() - started >= 2, "not before the token expired"


async def test_another_users_conversation_is_not_found_on_every_route(
    auth_http: list[httpx.AsyncClient], auth_database: Database
) -> None:
    alice_name, bob_name = new_user(), new_user()
    alice, bob = as_user(auth_http[0], alice_name), as_user(auth_http[1], bob_name)
    accepted, reply = await alice.ask(prompt("alice's secret"))
    conversation_id, message_id = accepted.conversation_id, accepted.message_id
    operations = await protected_operations(auth_http[0])
    for method, path in operations:
        if "{conversation_id}" not in path:
            continue
        url = concrete(path, conversation_id, message_id)
        refused = await bob.http.request(method, url, json={"title": "mine now"})
        assert refused.status_code == 404, f"{method} {path}: {refused.status_code} {refused.text}"
        assert "secret" not in refused.text
    # Posting into the same id makes bob's own conversation, leaving alice's alone.
    mine, _ = await bob.ask(prompt("bob's own"), conversation_id)
    assert mine.conversation_id == conversation_id
    assert (await bob.conversation(conversation_id)).messages[0].message.startswith("bob's own")
    assert (await alice.conversation(conversation_id)).messages[-1] == await alice.message(
        conversation_id, message_id
    )
    assert len((await alice.conversation(conversation_id)).messages) == 2
    async with Subscriber.open(
        str(bob.http.base_url).rstrip("/").replace("http", "ws", 1),
        conversation_id,
        headers=bearer(bob_name),
    ) as subscriber:
        assert {m.owner for m in subscriber.snapshot or []} == {bob_name}
    documents = auth_database["messages"].find({"conversationId": conversation_id})
    assert {document["owner"] async for document in documents} == {alice_name, bob_name}
    assert reply.owner == alice_name


async def test_two_users_same_conversation_id_two_instances_at_once(
    auth_http: list[httpx.AsyncClient], mock: Any
) -> None:
    conversation_id = new_conversation_id()
    names = [new_user(), new_user()]
    texts = [prompt(f"isolated-{index}", tokens=30, delay_ms=5) for index in range(2)]

    async def converse(index: int) -> Subscriber:
        name, other_instance = names[index], auth_http[1 - index]
        base = str(auth_http[index].base_url).rstrip("/").replace("http", "ws", 1)
        async with Subscriber.open(base, conversation_id, headers=bearer(name)) as subscriber:
            client = as_user(other_instance, name)
            accepted = await client.post_chat(texts[index], conversation_id)
            await subscriber.until_finished(accepted.message_id)
            return subscriber

    subscribers = await asyncio.gather(converse(0), converse(1))
    for index, subscriber in enumerate(subscribers):
        seen = [message.message for message in subscriber.messages.values()]
        assert texts[index] in seen and texts[1 - index] not in seen
        assert {message.owner for message in subscriber.messages.values()} == {names[index]}
        stored = await as_user(auth_http[index], names[index]).conversation(conversation_id)
        assert stored.messages[0].message == texts[index]
        assert len(stored.messages) == 2
    for index in range(2):
        (request,) = await mock.requests(texts[index])
        context = " ".join(str(item["content"]) for item in request["messages"])
        assert texts[1 - index] not in context, "a reply's context never holds another user's text"


async def test_server_made_conversation_ids_are_random(
    auth_http: list[httpx.AsyncClient],
) -> None:
    alice = as_user(auth_http[0], new_user())
    ids = [(await alice.post_chat(prompt("new", tokens=1))).conversation_id for _ in range(2)]
    for conversation_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", conversation_id), conversation_id
    assert ids[0][:8] != ids[1][:8], "no shared time-ordered prefix"


async def test_the_owner_is_served_on_every_route_of_a_conversation(
    auth_http: list[httpx.AsyncClient],
) -> None:
    """The other side of the 404s above: the same requests, by the owner, succeed."""
    alice = as_user(auth_http[1], new_user())
    accepted, _ = await alice.ask(prompt("mine"))
    conversation_id, message_id = accepted.conversation_id, accepted.message_id
    operations = [
        (method, path)
        for method, path in await protected_operations(auth_http[1])
        if "{conversation_id}" in path
    ]
    operations.sort(key=lambda operation: operation[0] == "DELETE")  # deleting comes last
    assert operations[-1][0] == "DELETE"
    for method, path in operations:
        url = concrete(path, conversation_id, message_id)
        served = await alice.http.request(method, url, json={"title": "renamed"})
        assert 200 <= served.status_code < 300, f"{method} {path}: {served.status_code}"
