"""Limits (contract "Limits"): per user, held across two API instances; a refused request
stores and publishes nothing.

"Publishes nothing" is proven without waiting on silence: the owner watches the conversation
the refused requests were aimed at, then makes accepted requests there on the same instances,
and the first event (indeed every event) that arrives is theirs (`Subscriber.until_only`).
"""

import asyncio
import contextlib

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.api.limits import ACTIVE_REPLIES_RETRY_AFTER_SECONDS
from shared.schemas import ChatAccepted
from shared.store.database import Database
from tests.clients import Subscriber
from tests.helpers import ApiClient, eventually, new_conversation_id, prompt
from tests.infra import Deployment
from tests.metrics import Samples, api_metrics, grown, summed
from tests.tokens import (
    ACTIVE_REPLIES,
    ALLOWED_ORIGIN,
    BODY_LIMIT,
    RATE_LIMIT,
    WEBSOCKETS,
    new_user,
    user_token,
)

FIFTY_MB = 50 * 1024 * 1024
CHUNK = 64 * 1024
REFUSED = "chat_limits_refused_total"


def bearer(sub: str) -> dict[str, str]:
    return {"authorization": f"Bearer {user_token(sub)}"}


def api_pids(stack: Deployment) -> list[int]:
    return [process.pid for process in stack.stack.processes if "-api-" in process.name]


async def send_huge_body(
    url: str, headers: dict[str, str], declare_length: bool, conversation_id: str
) -> str:
    """Start a 50 MB POST to a conversation, send a little over MAX_BODY_BYTES of it, and read
    the answer.

    The body is never finished: an answer at all proves the API decided before reading it
    whole. (Sending on would race the API's close against the answer, and a reset can swallow
    an answer already sent.) Returns the status line.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = ["POST /chat HTTP/1.1", f"host: {host}:{port}", "content-type: application/json"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head.append(f"content-length: {FIFTY_MB}" if declare_length else "transfer-encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    status = asyncio.create_task(reader.readline())
    start = b'{"conversationId": "%s", "message": "' % conversation_id.encode()
    chunk = start + b"x" * (CHUNK - len(start))
    sent = 0
    try:
        while sent <= 2 * BODY_LIMIT and not status.done():
            writer.write(chunk if declare_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            chunk = b"x" * CHUNK
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(writer.drain(), 5)
            sent += len(chunk)
        line = await asyncio.wait_for(status, 10)
    finally:
        writer.close()
    return line.decode().strip()


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
async def test_a_50_mb_body_is_refused_with_413_before_it_is_read(
    auth_stack: Deployment, auth_database: Database, declare_length: bool
) -> None:
    pid = api_pids(auth_stack)[0]
    user, conversation_id = new_user(), new_conversation_id()
    url = auth_stack.api_urls[0]
    async with watching(auth_stack.api_urls[1], user, conversation_id) as subscriber:
        rss_before = psutil.Process(pid).memory_info().rss
        count = await auth_database["messages"].count_documents({})
        line = await send_huge_body(url, bearer(user), declare_length, conversation_id)
        assert line == "HTTP/1.1 413 Request Entity Too Large"
        grown = psutil.Process(pid).memory_info().rss - rss_before
        assert grown < 16 * 1024 * 1024, f"the API grew by {grown} bytes"
        assert await auth_database["messages"].count_documents({}) == count
        accepted = await client(url, user).post_chat(prompt("fits", tokens=1), conversation_id)
        await subscriber.until_only([accepted])


async def test_cors_allows_only_the_listed_origins(auth_stack: Deployment) -> None:
    async with httpx.AsyncClient(base_url=auth_stack.api_urls[0], timeout=10.0) as http:
        preflight = {
            "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type",
        }
        allowed = await http.options("/chat", headers={"origin": ALLOWED_ORIGIN, **preflight})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
        other = await http.options("/chat", headers={"origin": "https://evil.test", **preflight})
        assert "access-control-allow-origin" not in other.headers


def client(url: str, sub: str) -> ApiClient:
    return ApiClient(httpx.AsyncClient(base_url=url, timeout=10.0, headers=bearer(sub)))


def watching(
    url: str, sub: str, conversation_id: str
) -> contextlib.AbstractAsyncContextManager[Subscriber]:
    """The owner's WebSocket on a conversation, open from the snapshot on."""
    return Subscriber.open(url.replace("http://", "ws://", 1), conversation_id, headers=bearer(sub))


async def post(api: ApiClient, text: str, conversation_id: str) -> httpx.Response:
    return await api.http.post("/chat", json={"message": text, "conversationId": conversation_id})


async def regenerate(api: ApiClient, reply: ChatAccepted) -> httpx.Response:
    path = f"/conversations/{reply.conversation_id}/messages/{reply.message_id}/regenerate"
    return await api.http.post(path)


async def stop(api: ApiClient, reply: ChatAccepted) -> None:
    path = f"/conversations/{reply.conversation_id}/messages/{reply.message_id}/stop"
    assert (await api.http.post(path)).status_code == 200


async def refusals(stack: Deployment) -> Samples:
    """Both instances' metrics added up, as an operator's dashboard sums them."""
    return await summed(api_metrics(stack.api_urls))


async def minute_passes(database: Database, user: str) -> None:
    """What a minute would do to the user's rate window, at once: it empties."""
    await database["rate_limits"].delete_one({"_id": user})


async def use_up_the_rate(instances: list[ApiClient], count: int) -> None:
    """`count` requests admitted, each in a new conversation and finished (so none is active)."""
    for index in range(count):
        accepted = await instances[index % 2].post_chat(prompt("rate", tokens=1, delay_ms=0))
        await instances[0].finished(accepted.conversation_id, accepted.message_id)


async def slow_replies(instances: list[ApiClient]) -> list[ChatAccepted]:
    """MAX_ACTIVE_REPLIES replies still being written, each in a new conversation."""
    return [
        await instances[index % 2].post_chat(prompt("slow", tokens=200, delay_ms=20))
        for index in range(ACTIVE_REPLIES)
    ]


async def test_the_rate_limit_holds_across_two_instances(
    auth_stack: Deployment, auth_database: Database
) -> None:
    user, conversation_id = new_user(), new_conversation_id()
    instances = [client(url, user) for url in auth_stack.api_urls]
    await use_up_the_rate(instances, RATE_LIMIT)
    stored = await auth_database["messages"].count_documents({"owner": user})
    before = await refusals(auth_stack)
    async with watching(auth_stack.api_urls[0], user, conversation_id) as subscriber:
        for api in instances:
            refused = await post(api, prompt("over the rate"), conversation_id)
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await auth_database["messages"].count_documents({"owner": user}) == stored
        after = await refusals(auth_stack)
        assert grown(before, after, REFUSED, limit="rate") == len(instances)
        assert grown(before, after, REFUSED, limit="active_replies") == 0
        await minute_passes(auth_database, user)
        accepted = [
            await api.post_chat(prompt("in time", tokens=1), conversation_id) for api in instances
        ]
        await subscriber.until_only(accepted)
    other = client(auth_stack.api_urls[0], new_user())
    await other.post_chat(prompt("someone else", tokens=1, delay_ms=0))


async def test_active_replies_are_capped_across_two_instances(
    auth_stack: Deployment, auth_database: Database
) -> None:
    user, conversation_id = new_user(), new_conversation_id()
    instances = [client(url, user) for url in auth_stack.api_urls]
    slow = await slow_replies(instances)
    stored = await auth_database["messages"].count_documents({"owner": user})
    before = await refusals(auth_stack)
    async with watching(auth_stack.api_urls[1], user, conversation_id) as subscriber:
        for api in instances:
            refused = await post(api, prompt("one too many"), conversation_id)
            assert refused.status_code == 429, refused.text
            assert "still being written" in refused.json()["detail"]
            assert refused.headers["retry-after"] == str(ACTIVE_REPLIES_RETRY_AFTER_SECONDS)
        assert await auth_database["messages"].count_documents({"owner": user}) == stored
        after = await refusals(auth_stack)
        assert grown(before, after, REFUSED, limit="active_replies") == len(instances)
        assert grown(before, after, REFUSED, limit="rate") == 0
        accepted = []
        for api, finished in zip(instances, slow, strict=True):
            await stop(instances[1], finished)
            accepted.append(await api.post_chat(prompt("room again", tokens=1), conversation_id))
        await subscriber.until_only(accepted)


async def test_regenerate_answers_429_at_the_rate_limit_storing_nothing(
    auth_stack: Deployment, auth_database: Database
) -> None:
    user = new_user()
    instances = [client(url, user) for url in auth_stack.api_urls]
    first, _ = await instances[0].ask(prompt("to regenerate", tokens=1))
    await use_up_the_rate(instances, RATE_LIMIT - 1)
    stored = await auth_database["messages"].count_documents({"owner": user})
    async with watching(auth_stack.api_urls[1], user, first.conversation_id) as subscriber:
        for api in instances:
            refused = await regenerate(api, first)
            assert refused.status_code == 429, refused.text
            assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert await auth_database["messages"].count_documents({"owner": user}) == stored
        await minute_passes(auth_database, user)
        accepted = []
        for api in instances:
            response = await regenerate(api, first)
            assert response.status_code == 202, response.text
            accepted.append(ChatAccepted.model_validate(response.json()))
        await subscriber.until_only(accepted)


async def test_regenerate_answers_429_at_the_active_reply_limit_storing_nothing(
    auth_stack: Deployment, auth_database: Database
) -> None:
    user = new_user()
    instances = [client(url, user) for url in auth_stack.api_urls]
    first, _ = await instances[0].ask(prompt("to regenerate", tokens=1))
    slow = await slow_replies(instances)
    stored = await auth_database["messages"].count_documents({"owner": user})
    async with watching(auth_stack.api_urls[0], user, first.conversation_id) as subscriber:
        for api in instances:
            refused = await regenerate(api, first)
            assert refused.status_code == 429, refused.text
            assert "still being written" in refused.json()["detail"]
            assert refused.headers["retry-after"] == str(ACTIVE_REPLIES_RETRY_AFTER_SECONDS)
        assert await auth_database["messages"].count_documents({"owner": user}) == stored
        accepted = []
        for api, finished in zip(instances, slow, strict=True):
            await stop(api, finished)
            response = await regenerate(api, first)
            assert response.status_code == 202, response.text
            accepted.append(ChatAccepted.model_validate(response.json()))
        await subscriber.until_only(accepted)


def ws(url: str, conversation_id: str) -> str:
    return f"{url.replace('http://', 'ws://', 1)}/conversations/{conversation_id}/stream"


async def test_websockets_per_user_are_capped_across_two_instances(auth_stack: Deployment) -> None:
    user = new_user()
    urls = auth_stack.api_urls
    before = await refusals(auth_stack)
    async with contextlib.AsyncExitStack() as held:
        for index in range(WEBSOCKETS):
            websocket = await held.enter_async_context(
                connect(ws(urls[index % 2], new_conversation_id()), additional_headers=bearer(user))
            )
            assert '"type":"snapshot"' in await websocket.recv()
        for url in urls:
            async with connect(
                ws(url, new_conversation_id()), additional_headers=bearer(user)
            ) as over:
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(over.recv(), 10)
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
        after = await refusals(auth_stack)
        assert grown(before, after, REFUSED, limit="websockets") == len(urls)
        async with connect(
            ws(urls[1], new_conversation_id()), additional_headers=bearer(new_user())
        ) as other:
            assert '"type":"snapshot"' in await other.recv()

    async def reopened() -> bool:
        async with connect(
            ws(urls[0], new_conversation_id()), additional_headers=bearer(user)
        ) as again:
            return '"type":"snapshot"' in await again.recv()

    assert await eventually(reopened, what="a place freed by the closed sockets")


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [(ALLOWED_ORIGIN, True), ("https://evil.test", False), (None, True)],
)
async def test_the_stream_checks_the_origin(
    auth_stack: Deployment, origin: str | None, admitted: bool
) -> None:
    headers = {**bearer(new_user()), **({"origin": origin} if origin else {})}
    url = ws(auth_stack.api_urls[0], new_conversation_id())
    if admitted:
        async with connect(url, additional_headers=headers) as websocket:
            assert '"type":"snapshot"' in await websocket.recv()
    else:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == 403


async def test_the_api_own_origin_may_open_streams(auth_stack: Deployment) -> None:
    url = auth_stack.api_urls[1]
    headers = {**bearer(new_user()), "origin": url}
    async with connect(ws(url, new_conversation_id()), additional_headers=headers) as websocket:
        assert '"type":"snapshot"' in await websocket.recv()
