"""OpenAI's chat-completions wire format, rendered to bytes before a stream starts.

Streams send prebuilt chunks so the per-token path does no JSON work at all.
"""

import time
from typing import Any
from uuid import uuid4

import orjson

_DONE_EVENT = b"data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """The `usage` object of a completion or of the final stream chunk."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, error_type: str, code: int | str | None) -> dict[str, Any]:
    """An OpenAI-style error, which the client turns into the matching APIStatusError."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


class Reply:
    """One response's identity (id, created, model) and its rendering in both modes."""

    def __init__(self, model: str) -> None:
        self._id = f"chatcmpl-{uuid4().hex}"
        self._created = int(time.time())
        self._model = model

    def completion(self, text: str, token_usage: dict[str, int]) -> dict[str, Any]:
        """The whole answer as a non-streaming `chat.completion` object."""
        return {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": token_usage,
        }

    def head_event(self) -> bytes:
        """The first chunk: the assistant role with empty content, as the real API opens."""
        return self._chunk_event({"role": "assistant", "content": ""}, None)

    def token_events(self, tokens: list[str]) -> list[bytes]:
        """One content chunk per token."""
        return [self._chunk_event({"content": token}, None) for token in tokens]

    def tail_events(self, token_usage: dict[str, int] | None) -> bytes:
        """The stop chunk, the usage chunk when asked for (`stream_options`), then [DONE]."""
        events = [self._chunk_event({}, "stop")]
        if token_usage is not None:
            events.append(_event(self._chunk(choices=[], usage=token_usage)))
        events.append(_DONE_EVENT)
        return b"".join(events)

    def _chunk_event(self, delta: dict[str, str], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return _event(self._chunk(choices=[choice]))

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
