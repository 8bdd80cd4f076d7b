"""OpenAI's chat-completions wire format, rendered to bytes before a stream starts.

Streams send prebuilt chunks so the per-token path does no JSON work at all. The quirks of
OpenAI-compatible servers that a client must survive are rendered here too: SSE comment lines,
chunks with empty `choices`, an `error` object inside a `data:` event, a missing `[DONE]`.
"""

import time
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import orjson

_DONE_EVENT = b"data: [DONE]\n\n"
COMMENT_EVENT = b": OPENROUTER PROCESSING\n\n"
STREAM_ERROR_MESSAGE = "mock upstream error mid-stream"


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0) -> dict[str, Any]:
    """The `usage` object of a completion or of the final stream chunk.

    `completion_tokens` includes the reasoning, as OpenAI counts it.
    """
    token_usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if reasoning_tokens:
        token_usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return token_usage


def error_body(message: str, error_type: str, code: int | str | None) -> dict[str, Any]:
    """An OpenAI-style error, which the client turns into the matching APIStatusError."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


@dataclass(frozen=True, slots=True)
class Quirks:
    """What a stream adds around its chunks, as some OpenAI-compatible servers do."""

    comments: bool = False
    empty_choices: bool = False
    done: bool = True


class Completion:
    """One response's identity (id, created, model) and its rendering in both modes."""

    def __init__(self, model: str, quirks: Quirks) -> None:
        self._id = f"chatcmpl-{uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._quirks = quirks
        self._prefix = (COMMENT_EVENT if quirks.comments else b"") + (
            _event(self._chunk(choices=[])) if quirks.empty_choices else b""
        )

    def completion(
        self,
        text: str,
        token_usage: dict[str, Any],
        finish_reason: str,
        reasoning: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """The whole answer as a non-streaming `chat.completion` object.

        `reasoning` is (field name, text) when the model reasoned.
        """
        message = {"role": "assistant", "content": text}
        if reasoning is not None:
            message[reasoning[0]] = reasoning[1]
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": token_usage,
        }

    def head_event(self) -> bytes:
        """The first chunk: the assistant role with empty content, as the real API opens."""
        return self._chunk_event({"role": "assistant", "content": ""}, None)

    def token_events(self, tokens: list[str], field: str = "content") -> list[bytes]:
        """One chunk per token, carrying it in `delta.<field>`."""
        return [self._chunk_event({field: token}, None) for token in tokens]

    def tail_events(self, finish_reason: str, token_usage: dict[str, Any] | None) -> bytes:
        """The finish chunk, the usage chunk when asked for (`stream_options`), then [DONE]."""
        events = [self._chunk_event({}, finish_reason)]
        if token_usage is not None:
            events.append(self._prefix + _event(self._chunk(choices=[], usage=token_usage)))
        if self._quirks.done:
            events.append(_DONE_EVENT)
        return b"".join(events)

    def error_event(self) -> bytes:
        """An upstream failure reported inside the stream, the way OpenRouter does it."""
        choice = {"index": 0, "delta": {"content": ""}, "finish_reason": "error"}
        error = {"code": 502, "message": STREAM_ERROR_MESSAGE}
        return self._prefix + _event(self._chunk(choices=[choice], error=error))

    def _chunk_event(self, delta: dict[str, str], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return self._prefix + _event(self._chunk(choices=[choice]))

    def _chunk(self, **fields: Any) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            **fields,
        }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
