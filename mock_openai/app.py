"""The Starlette app: OpenAI-compatible routes plus `/_mock/*` routes for inspecting the logs."""

from collections.abc import Callable
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mock_openai.chat import DEFAULT_MODEL, BadRequestError, CompletionRequest, parse_chat_request
from mock_openai.directives import DirectiveError, Directives, parse_directives
from mock_openai.journal import Journal
from mock_openai.script import reasoning_tokens, reply_tokens, text_pieces
from mock_openai.stream import TokenStream
from mock_openai.wire import Completion, Quirks, error_body, usage


class OrjsonResponse(Response):
    """JSON via orjson: the logs can hold many thousands of floats."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error(status: int, message: str, error_type: str = "invalid_request_error") -> Response:
    return OrjsonResponse(error_body(message, error_type, None), status_code=status)


Script = Callable[[str, int, int], list[str]]
"""How the mock makes up `count` tokens for a key and an attempt (`reply_tokens`, ...)."""


def _words(given: str | None, made: Script, key: str, attempt: int, count: int) -> list[str]:
    """The first `count` pieces of a given text, or the made-up tokens for `key`."""
    return made(key, attempt, count) if given is None else text_pieces(given)[:count]


class MockEndpoints:
    """Request handlers sharing one journal and the server-wide defaults."""

    def __init__(self, defaults: Directives) -> None:
        self._defaults = defaults
        self._journal = Journal()

    async def chat_completions(self, request: Request) -> Response | TokenStream:
        try:
            chat = parse_chat_request(await request.body())
            directives = parse_directives(chat.key, self._defaults)
        except (BadRequestError, DirectiveError) as exc:
            return _error(400, str(exc))
        attempt = self._journal.record_request(chat)
        if directives.status is not None:
            message = f"mock error status={directives.status} (attempt {attempt})"
            body = error_body(message, "mock_error", directives.status)
            return OrjsonResponse(body, status_code=directives.status)
        tokens = _words(directives.text, reply_tokens, chat.key, attempt, directives.sent_tokens)
        reasoning = _words(
            directives.reasoning_text, reasoning_tokens, chat.key, attempt, directives.reasoning
        )
        token_usage = usage(chat.prompt_words, len(reasoning) + len(tokens), len(reasoning))
        reply = Completion(
            chat.model, Quirks(directives.comments, directives.empty_choices, directives.done)
        )
        if chat.stream:
            sent_usage = token_usage if chat.include_usage and directives.usage else None
            return self._stream(chat, directives, attempt, reply, tokens, reasoning, sent_usage)
        if directives.ending != "finish":
            return _error(400, "fail_after, hang_after and error_after need stream=true")
        thought = (directives.reasoning_field, "".join(reasoning)) if reasoning else None
        completion = reply.completion("".join(tokens), token_usage, directives.finish, thought)
        return OrjsonResponse(completion)

    def _stream(
        self,
        chat: CompletionRequest,
        directives: Directives,
        attempt: int,
        reply: Completion,
        tokens: list[str],
        reasoning: list[str],
        token_usage: dict[str, Any] | None,
    ) -> TokenStream:
        emitted, reasoning_emitted = self._journal.open_emission(
            chat.key, attempt, tokens, reasoning
        )
        if directives.ending == "error":
            tail = reply.error_event()
        else:
            tail = reply.tail_events(directives.finish, token_usage)
        return TokenStream(
            head=reply.head_event(),
            tokens=reply.token_events(reasoning, directives.reasoning_field)
            + reply.token_events(tokens),
            tail=tail,
            delay_s=directives.delay_ms / 1000,
            ending=directives.ending,
            emitted=emitted,
            reasoning=len(reasoning),
            reasoning_emitted=reasoning_emitted,
        )

    async def models(self, request: Request) -> Response:
        model = {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "mock_openai"}
        return OrjsonResponse({"object": "list", "data": [model]})

    async def requests(self, request: Request) -> Response:
        return OrjsonResponse(self._journal.requests(request.query_params.get("contains")))

    async def emissions(self, request: Request) -> Response:
        return OrjsonResponse(self._journal.emissions(request.query_params.get("contains")))

    async def reset(self, request: Request) -> Response:
        self._journal.reset()
        return Response(status_code=204)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok")


def create_app(
    tokens: int = 40,
    delay_ms: float = 20.0,
    reasoning: int = 0,
    reasoning_field: str = "reasoning_content",
) -> Starlette:
    """Build an app whose replies default to `tokens` tokens, `delay_ms` apart, after
    `reasoning` reasoning tokens in `delta.<reasoning_field>`.
    """
    defaults = Directives(
        tokens=tokens, delay_ms=delay_ms, reasoning=reasoning, reasoning_field=reasoning_field
    )
    endpoints = MockEndpoints(defaults)
    return Starlette(
        routes=[
            Route("/v1/chat/completions", endpoints.chat_completions, methods=["POST"]),
            Route("/v1/models", endpoints.models, methods=["GET"]),
            Route("/_mock/requests", endpoints.requests, methods=["GET"]),
            Route("/_mock/requests", endpoints.reset, methods=["DELETE"]),
            Route("/_mock/reset", endpoints.reset, methods=["POST"]),
            Route("/_mock/emissions", endpoints.emissions, methods=["GET"]),
            Route("/healthz", endpoints.healthz, methods=["GET"]),
        ]
    )
