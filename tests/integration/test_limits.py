"""Limits (contract "Limits"): per user, held across two API instances; a refused request
stores and publishes nothing.
"""

import asyncio
import contextlib

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from shared.store.database import Database
from tests.helpers import ApiClient, eventually, new_conversation_id, prompt
from tests.infra import Deployment
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


def bearer(sub: str) -> dict[str, str]:
    return {"authorization": f"Bearer {user_token(sub)}"}


def api_pids(stack: Deployment) -> list[int]:
    return [process.pid for process in stack.stack.processes if "-api-" in process.name]


async def send_huge_body(url: str, headers: dict[str, str], declare_length: bool) -> str:
    """Start a 50 MB POST, send a little over MAX_BODY_BYTES of it, and read the answer.

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
    chunk = b'{"message": "' + b"x" * (CHUNK - 13)
    sent = 0
    try:
        while sent <= 2 * BODY_LIMIT and not status.done():
            writer.write(chunk if declare_length else b"%x\r\n%s\r\n" % (len(chunk), chunk))
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
    rss_before = psutil.Process(pid).memory_info().rss
    count = await auth_database["messages"].count_documents({})
    line = await send_huge_body(auth_stack.api_urls[0], bearer(new_user()), declare_length)
    assert line == "HTTP/1.1 413 Request Entity Too Large"
    grown = psutil.Process(pid).memory_info().rss - rss_before
    assert grown < 16 * 1024 * 1024, f"the API grew by {grown} bytes"
    assert await auth_database["messages"].count_documents({}) == count


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


async def post(api: ApiClient, text: str) -> httpx.Response:
    return await api.http.post("/chat", json={"message": text})


async def test_the_rate_limit_holds_across_two_instances(
    auth_stack: Deployment, auth_database: Database
) -> None:
    user = new_user()
    instances = [client(url, user) for url in auth_stack.api_urls]
    for index in range(RATE_LIMIT):
        accepted = await instances[index % 2].post_chat(prompt("rate", tokens=1, delay_ms=0))
        await instances[0].finished(accepted.conversation_id, accepted.message_id)
    stored = await auth_database["messages"].count_documents({"owner": user})
    for api in instances:
        refused = await post(api, prompt("over the rate"))
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert await auth_database["messages"].count_documents({"owner": user}) == stored
    other = client(auth_stack.api_urls[0], new_user())
    await other.post_chat(prompt("someone else", tokens=1, delay_ms=0))


async def test_active_replies_are_capped_across_two_instances(
    auth_stack: Deployment, auth_database: Database
) -> None:
    user = new_user()
    instances = [client(url, user) for url in auth_stack.api_urls]
    slow = [
        await instances[index % 2].post_chat(prompt("slow", tokens=200, delay_ms=20))
        for index in range(ACTIVE_REPLIES)
    ]
    stored = await auth_database["messages"].count_documents({"owner": user})
    for api in instances:
        refused = await post(api, prompt("one too many"))
        assert refused.status_code == 429, refused.text
        assert "still being written" in refused.json()["detail"]
    assert await auth_database["messages"].count_documents({"owner": user}) == stored
    stop = f"/conversations/{slow[0].conversation_id}/messages/{slow[0].message_id}/stop"
    assert (await instances[1].http.post(stop)).status_code == 200
    await instances[0].post_chat(prompt("room again", tokens=1, delay_ms=0))
    for accepted in slow[1:]:
        url = f"/conversations/{accepted.conversation_id}/messages/{accepted.message_id}/stop"
        await instances[0].http.post(url)


def ws(url: str, conversation_id: str) -> str:
    return f"{url.replace('http://', 'ws://', 1)}/conversations/{conversation_id}/stream"


async def test_websockets_per_user_are_capped_across_two_instances(auth_stack: Deployment) -> None:
    user = new_user()
    urls = auth_stack.api_urls
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
