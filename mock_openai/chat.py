"""Reading a chat-completions request body into the few fields the mock acts on."""

from dataclasses import dataclass
from typing import Any

import orjson

DEFAULT_MODEL = "mock-model"


class BadRequestError(ValueError):
    """A body the real API would reject with 400 `invalid_request_error`."""


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """The parts of a request that shape the reply and the logs."""

    model: str
    messages: list[Any]
    stream: bool
    include_usage: bool
    key: str

    @property
    def prompt_words(self) -> int:
        """A rough prompt size for `usage`, since the mock has no tokenizer."""
        return sum(len(_text(message).split()) for message in self.messages)


def parse_chat_request(body: bytes) -> CompletionRequest:
    """Validate just enough of the body to answer it like the real API would."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequestError("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array")
    if not all(isinstance(message, dict) for message in messages):
        raise BadRequestError("each message must be an object")
    options = data.get("stream_options")
    return CompletionRequest(
        model=str(data.get("model") or DEFAULT_MODEL),
        messages=messages,
        stream=data.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        key=last_user_text(messages),
    )


def last_user_text(messages: list[Any]) -> str:
    """The text of the last user message: the seed of the reply and the log filter's target."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return _text(message)
    return ""


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
