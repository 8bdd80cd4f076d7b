"""The load: N conversations, each subscribed over WebSocket before it posts.

The per-frame path only timestamps, measures and parses the frame; all analysis waits until the
run is over, so the client disturbs the timings it takes as little as it can.
"""

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from shared.events import FINISHED_EVENT

POST_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Load:
    """What one run asks of the system."""

    conversations: int
    tokens: int
    delay_ms: float
    ramp_ms: float = 0.0
    timeout_s: float = 60.0
    ws_compression: bool = False
    reasoning_tokens: int = 0

    def prompt(self, key: str) -> str:
        reasoning = f" reasoning={self.reasoning_tokens}" if self.reasoning_tokens else ""
        return f"{key} [mock tokens={self.tokens} delay_ms={self.delay_ms:g}{reasoning}]"


@dataclass(slots=True)
class Frame:
    received_at: float
    size: int
    event: dict[str, Any]


@dataclass(slots=True)
class Conversation:
    """Everything one conversation saw, raw; `analysis` makes sense of it after the run."""

    key: str
    conversation_id: str
    frames: list[Frame] = field(default_factory=list)
    post_started: float | None = None
    post_answered: float | None = None
    post_status: int | None = None
    message_id: str | None = None
    finished: bool = False
    error: str | None = None


@dataclass(slots=True)
class Tally:
    total: int
    started_at: float = field(default_factory=time.monotonic)
    done: int = 0
    failed: int = 0
    tokens: int = 0


async def run_load(
    load: Load, api_url: str, run_id: str, label: str, show_progress: bool = True
) -> list[Conversation]:
    """Drive `load` against the API at `api_url`; every conversation ends by the timeout."""
    conversations = [
        Conversation(key=f"bench-{run_id}-{index:06d}", conversation_id=f"bench-{run_id}-{index}")
        for index in range(load.conversations)
    ]
    progress = Tally(total=load.conversations)
    parts = urlsplit(api_url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"the bench speaks plain HTTP to a local API, not {api_url}")
    api = Endpoint(parts.hostname, parts.port or 80)
    ws_url = f"ws://{parts.netloc}"
    step = load.ramp_ms / 1000 / max(1, load.conversations - 1)
    start = time.monotonic() + 0.05
    tasks = [
        asyncio.create_task(
            _converse(conversation, load, api, ws_url, start + index * step, progress)
        )
        for index, conversation in enumerate(conversations)
    ]
    reporter = asyncio.create_task(_report(progress, label, show_progress))
    _, pending = await asyncio.wait(tasks, timeout=load.timeout_s + load.ramp_ms / 1000)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    reporter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reporter
    for conversation, task in zip(conversations, tasks, strict=True):
        if task in pending and conversation.error is None:
            conversation.error = f"timed out after {load.timeout_s:.0f}s"
    _print_progress(progress, label, final=True, show=show_progress)
    return conversations


async def _converse(
    conversation: Conversation,
    load: Load,
    api: "Endpoint",
    ws_url: str,
    start_at: float,
    progress: Tally,
) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    url = f"{ws_url}/conversations/{conversation.conversation_id}/stream"
    try:
        async with connect(
            url,
            compression="deflate" if load.ws_compression else None,
            max_size=None,
            max_queue=None,
            ping_interval=None,
            open_timeout=30,
            close_timeout=1,
        ) as websocket:
            await _receive(websocket, conversation)  # the snapshot
            reading = asyncio.create_task(_read_until_finished(websocket, conversation, progress))
            try:
                await _post(api, conversation, load)
                await reading
            finally:
                if not reading.done():
                    reading.cancel()
                    with contextlib.suppress(asyncio.CancelledError, WebSocketException):
                        await reading
    except (OSError, EOFError, TimeoutError, WebSocketException, ValueError) as error:
        conversation.error = f"{type(error).__name__}: {error}"
        progress.failed += 1
    finally:
        progress.done += 1


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int


async def _post(api: Endpoint, conversation: Conversation, load: Load) -> None:
    """POST /chat on a connection of its own: an HTTP client's pool would cost the bench more
    CPU per request than the exchange itself, at hundreds of concurrent conversations."""
    body = orjson.dumps(
        {"message": load.prompt(conversation.key), "conversationId": conversation.conversation_id}
    )
    conversation.post_started = time.time()
    status, answer = await asyncio.wait_for(_http_post(api, "/chat", body), POST_TIMEOUT_SECONDS)
    conversation.post_answered = time.time()
    conversation.post_status = status
    if status != 202:
        raise ValueError(f"POST /chat answered {status}: {answer[:200]!r}")
    conversation.message_id = orjson.loads(answer)["messageId"]


async def _http_post(api: Endpoint, path: str, body: bytes) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 POST of JSON: status and body of the answer."""
    reader, writer = await asyncio.open_connection(api.host, api.port)
    try:
        writer.write(
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (path.encode(), api.host.encode(), api.port, len(body), body)
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        length = headers.get("content-length")
        answer = await (reader.readexactly(int(length)) if length else reader.read())
        return status, answer
    finally:
        writer.close()


async def _receive(websocket: ClientConnection, conversation: Conversation) -> dict[str, Any]:
    raw = await websocket.recv(decode=False)
    received_at = time.time()
    event: dict[str, Any] = orjson.loads(raw)
    conversation.frames.append(Frame(received_at, len(raw), event))
    return event


async def _read_until_finished(
    websocket: ClientConnection, conversation: Conversation, progress: Tally
) -> None:
    """Read frames until the assistant's reply completes or fails."""
    while True:
        event = await _receive(websocket, conversation)
        kind = event["type"]
        if kind == "message.delta":
            progress.tokens += event["delta"].count(" ")
        elif kind in FINISHED_EVENT.values() and event["message"]["from"] == "assistant":
            conversation.finished = True
            return


async def _report(progress: Tally, label: str, show: bool) -> None:
    interactive = sys.stderr.isatty()
    interval = 0.25 if interactive else 5.0
    while True:
        await asyncio.sleep(interval)
        _print_progress(progress, label, final=False, show=show)


def _print_progress(progress: Tally, label: str, final: bool, show: bool) -> None:
    if not show:
        return
    elapsed = time.monotonic() - progress.started_at
    line = (
        f"{label}: {progress.done}/{progress.total} conversations done"
        f" ({progress.failed} failed), {progress.tokens} tokens, {elapsed:.1f}s"
    )
    if sys.stderr.isatty():
        end = "\n" if final else ""
        sys.stderr.write(f"\r\x1b[K{line}{end}")
    else:
        sys.stderr.write(line + "\n")
    sys.stderr.flush()
