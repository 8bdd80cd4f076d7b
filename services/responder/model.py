"""The model: the streaming chat-completions call and the parsing of its stream."""

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
from openai.types.chat import ChatCompletionMessageParam

from shared.settings import Settings
from shared.startup import DependencyUnavailable

UNUSED_KEY = "unused"
DATA = "data:"
DONE = "[DONE]"


class ModelError(Exception):
    """The upstream failed: the reply ends `failed` with this text as its error.

    `kind` (status, timeout, connection, stream, reported) labels chat_model_errors_total.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


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

    async def stream(self, context: list[ChatCompletionMessageParam]) -> AsyncIterator[str]:
        """Yield the reply's text as it arrives; any upstream failure becomes a ModelError.

        The server-sent events are read as raw lines and decoded with orjson: the SDK's typed
        chunk objects cost about nine times as much CPU per token, on the hottest path there is.
        """
        try:
            async with self.client.chat.completions.with_streaming_response.create(
                model=self.model, messages=context, stream=True
            ) as response:
                async for line in response.iter_lines():
                    if not line.startswith(DATA):
                        continue
                    data = line[len(DATA) :].strip()
                    if data == DONE:
                        return
                    for text in chunk_texts(orjson.loads(data)):
                        yield text
        except (openai.OpenAIError, httpx2.HTTPError, orjson.JSONDecodeError) as error:
            raise ModelError(describe(error), kind_of(error)) from error
        raise ModelError("model API ended the stream without finishing the reply", "stream")

    async def close(self) -> None:
        await self.client.close()


def chunk_texts(chunk: dict[str, Any]) -> list[str]:
    """The text pieces of one streamed chat-completion chunk."""
    if "error" in chunk:
        message = chunk["error"].get("message", chunk["error"])
        raise ModelError(f"model API reported: {message}", "reported")
    return [
        text
        for choice in chunk.get("choices") or ()
        if (text := (choice.get("delta") or {}).get("content"))
    ]


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
