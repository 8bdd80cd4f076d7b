"""The model: the streaming chat-completions call and the parsing of its stream."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai
import orjson
from openai.types.chat import ChatCompletionMessageParam, ChatCompletionStreamOptionsParam

from shared.settings import Settings
from shared.startup import DependencyUnavailable

UNUSED_KEY = "unused"
DATA = "data:"
DONE = "[DONE]"


USAGE_OPTIONS: ChatCompletionStreamOptionsParam = {"include_usage": True}

Piece = tuple[str, str]
"""(text, reasoning) appended by one chunk; either may be empty, not both."""


class ModelError(Exception):
    """The upstream failed: the reply ends `failed` with this text as its error.

    `kind` (status, timeout, connection, stream, reported) labels chat_model_errors_total.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(slots=True)
class StreamEnd:
    """What a stream said besides its text, filled in as it arrives.

    `[DONE]` missing after a `finish_reason` is a finished reply: some servers never send it.
    """

    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None


class ChatModel:
    def __init__(self, settings: Settings) -> None:
        if settings.openai_api_key is None and settings.openai_base_url is None:
            raise DependencyUnavailable(
                "OPENAI_API_KEY",
                "",
                "not set: set it, or point OPENAI_BASE_URL at an OpenAI-compatible server",
            )
        self.model = settings.openai_model
        self.client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key or UNUSED_KEY,
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout_seconds,
            max_retries=2,
        )

    async def check(self, timeout: float) -> None:
        """Fail at start-up, not on the first user message, when the model API is unusable."""
        try:
            await self.client.with_options(timeout=timeout, max_retries=0).models.list()
        except openai.AuthenticationError as error:
            raise DependencyUnavailable("OPENAI_API_KEY", "", error.message) from error
        except openai.APIError as error:
            raise DependencyUnavailable(
                "OPENAI_BASE_URL", str(self.client.base_url), error
            ) from error

    async def stream(
        self, context: list[ChatCompletionMessageParam], end: StreamEnd
    ) -> AsyncIterator[Piece]:
        """Yield (text, reasoning) pieces as they arrive; any upstream failure is a ModelError.

        What the stream says besides text (finish reason, usage, model) goes into `end` as it
        arrives, so a reply stopped or failed midway keeps what came. The server-sent events
        are read as raw lines and decoded with orjson: the SDK's typed chunk objects cost about
        nine times as much CPU per token, on the hottest path there is. Anything but a `data:`
        line (SSE comments such as `: OPENROUTER PROCESSING`, blank lines) is skipped.
        """
        try:
            async with self.client.chat.completions.with_streaming_response.create(
                model=self.model, messages=context, stream=True, stream_options=USAGE_OPTIONS
            ) as response:
                async for line in response.iter_lines():
                    if not line.startswith(DATA):
                        continue
                    data = line[len(DATA) :].strip()
                    if data == DONE:
                        return
                    piece = read_chunk(orjson.loads(data), end)
                    if piece is not None:
                        yield piece
        except (openai.OpenAIError, httpx2.HTTPError, orjson.JSONDecodeError) as error:
            raise ModelError(describe(error), kind_of(error)) from error
        if end.finish_reason is None:
            raise ModelError("model API ended the stream without finishing the reply", "stream")

    async def close(self) -> None:
        await self.client.close()


def read_chunk(chunk: dict[str, Any], end: StreamEnd) -> Piece | None:
    """The text and reasoning of one streamed chunk; its finish reason, usage and model into
    `end`. Chunks with empty `choices` (a usage chunk, a provider's keep-alive) yield nothing.
    """
    if error := chunk.get("error"):
        message = error.get("message", error) if isinstance(error, dict) else error
        raise ModelError(f"model API reported: {message}", "reported")
    if end.model is None:
        end.model = chunk.get("model")
    if usage := chunk.get("usage"):
        end.usage = usage
    choices = chunk.get("choices")
    if not choices:
        return None
    choice = choices[0]
    if finish_reason := choice.get("finish_reason"):
        end.finish_reason = finish_reason
    delta = choice.get("delta")
    if not delta:
        return None
    text = delta.get("content") or ""
    reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
    return (text, reasoning) if text or reasoning else None


def kind_of(error: BaseException) -> str:
    if isinstance(error, openai.APIStatusError):
        return "status"
    if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException):
        return "timeout"
    if isinstance(error, openai.APIConnectionError | httpx2.TransportError):
        return "connection"
    return "stream"


def describe(error: BaseException) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"model API answered {error.status_code}: {error.message}"
    if isinstance(error, openai.APITimeoutError | httpx2.TimeoutException):
        return "model API timed out"
    return f"model API failed: {type(error).__name__}: {error}".rstrip(": ")
