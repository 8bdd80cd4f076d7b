"""ChatModel.stream against the mock model as a real process: every provider quirk it reads."""

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from devstack.stack import start_mock_model
from mock_openai import reasoning_tokens, reply_tokens
from mock_openai.wire import STREAM_ERROR_MESSAGE
from services.responder.model import ChatModel, ModelError, Piece, StreamEnd
from shared.settings import Settings
from tests.helpers import prompt


@pytest.fixture(scope="module")
def model_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start_mock_model(tmp_path_factory.mktemp("mock"), tokens=4, delay_ms=0)
    try:
        yield url
    finally:
        process.stop()


@pytest_asyncio.fixture
async def model(model_url: str) -> AsyncIterator[ChatModel]:
    chat_model = ChatModel(Settings(openai_base_url=model_url, openai_model="gpt-test"))
    try:
        yield chat_model
    finally:
        await chat_model.close()


async def _read(model: ChatModel, text: str) -> tuple[list[Piece], StreamEnd]:
    end = StreamEnd()
    pieces = [piece async for piece in model.stream([{"role": "user", "content": text}], end)]
    return pieces, end


def _texts(pieces: list[Piece]) -> tuple[str, str]:
    return "".join(text for text, _ in pieces), "".join(thought for _, thought in pieces)


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_then_text_with_usage(model: ChatModel, field: str) -> None:
    text = prompt("think", reasoning=3, reasoning_field=field)
    pieces, end = await _read(model, text)
    assert pieces[:3] == [("", token) for token in reasoning_tokens(text, 0, 3)]
    assert _texts(pieces) == (
        "".join(reply_tokens(text, 0, 4)),
        "".join(reasoning_tokens(text, 0, 3)),
    )
    assert end.finish_reason == "stop"
    assert end.model == "gpt-test"
    assert end.usage is not None
    assert (end.usage["completion_tokens"], end.usage["completion_tokens_details"]) == (
        7,
        {"reasoning_tokens": 3},
    )


@pytest.mark.asyncio
async def test_comments_empty_choices_and_missing_done_are_survived(model: ChatModel) -> None:
    text = prompt("quirky", comments=1, empty_choices=1, done=0)
    pieces, end = await _read(model, text)
    assert _texts(pieces) == ("".join(reply_tokens(text, 0, 4)), "")
    assert end.finish_reason == "stop"
    assert end.usage is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("reason", ["length", "content_filter"])
async def test_finish_reason_is_kept(model: ChatModel, reason: str) -> None:
    _, end = await _read(model, prompt("cut", finish=reason))
    assert end.finish_reason == reason


@pytest.mark.asyncio
async def test_no_usage_when_the_server_ignores_the_option(model: ChatModel) -> None:
    _, end = await _read(model, prompt("plain", usage=0))
    assert (end.finish_reason, end.usage) == ("stop", None)


@pytest.mark.asyncio
async def test_error_event_fails_with_its_message_after_the_text(model: ChatModel) -> None:
    text = prompt("broken", error_after=2)
    end = StreamEnd()
    pieces: list[Piece] = []
    with pytest.raises(ModelError, match=STREAM_ERROR_MESSAGE):
        async for piece in model.stream([{"role": "user", "content": text}], end):
            pieces.append(piece)
    assert _texts(pieces) == ("".join(reply_tokens(text, 0, 2)), "")


@pytest.mark.asyncio
async def test_a_dropped_connection_is_a_model_error(model: ChatModel) -> None:
    with pytest.raises(ModelError, match="model API"):
        await _read(model, prompt("dropped", fail_after=1))
