"""mock_openai driven by the real `openai` client against a real subprocess, as its users do."""

import asyncio
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio

from mock_openai.directives import DirectiveError, Directives, parse_directives
from mock_openai.script import VOCABULARY, reasoning_tokens, reply_tokens
from mock_openai.wire import COMMENT_EVENT, STREAM_ERROR_MESSAGE
from tests import helpers

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TOKENS = 8
STARTUP_DEADLINE_S = 15.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_healthy(process: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mock_openai exited early with {process.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    pytest.fail("mock_openai did not become healthy in time")


@pytest.fixture(scope="module")
def mock_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    command = [sys.executable, "-m", "mock_openai", "--port", str(port)]
    command += ["--tokens", str(DEFAULT_TOKENS), "--delay-ms", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, base)
        yield process, base
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stdout is not None
        process.stdout.close()


@pytest.fixture
def base(mock_process: tuple[subprocess.Popen[str], str]) -> str:
    return mock_process[1]


@pytest_asyncio.fixture
async def client(base: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=5.0
    ) as client:
        yield client


def _prompt(directive: str = "") -> str:
    """A unique prompt, so attempts and log filters never see other tests' requests."""
    return f"question {uuid.uuid4().hex} {directive}".strip()


def _messages(prompt: str) -> list[Any]:
    return [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": prompt},
    ]


async def _stream_text(client: openai.AsyncOpenAI, prompt: str, into: list[str]) -> None:
    stream = await client.chat.completions.create(
        model="gpt-test", messages=_messages(prompt), stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            into.append(chunk.choices[0].delta.content)


def test_announces_base_url(mock_process: tuple[subprocess.Popen[str], str]) -> None:
    process, base = mock_process
    assert process.stdout is not None
    assert process.stdout.readline().strip() == f"mock_openai listening on {base}/v1"


def test_reply_tokens_is_deterministic_per_attempt() -> None:
    first = reply_tokens("hello", 0, 20)
    assert first == reply_tokens("hello", 0, 20)
    assert first[:5] == reply_tokens("hello", 0, 5)
    assert first != reply_tokens("hello", 1, 20)
    assert all(token.endswith(" ") and token[:-1] in VOCABULARY for token in first)


def test_directives_override_defaults_and_reject_typos() -> None:
    defaults = Directives(tokens=40, delay_ms=20)
    parsed = parse_directives("hi [mock tokens=5 delay_ms=0 hang_after=2] there", defaults)
    assert (parsed.tokens, parsed.delay_ms, parsed.hang_after) == (5, 0.0, 2)
    assert (parsed.sent_tokens, parsed.ending) == (2, "hang")
    assert parse_directives("no directive", defaults) == defaults
    for bad in (
        "[mock tokenz=5]",
        "[mock tokens=x]",
        "[mock status=200]",
        "[mock fail_after=1 hang_after=1]",
        "[mock error_after=1 fail_after=1]",
        "[mock tokens=1.5]",
        "[mock reasoning_field=thoughts]",
        "[mock finish=Stop!]",
        "[mock comments=2]",
        "[mock done=yes]",
    ):
        with pytest.raises(DirectiveError):
            parse_directives(bad, defaults)


def test_a_given_text_is_decoded_and_sets_the_count() -> None:
    defaults = Directives(tokens=40, delay_ms=20)
    parsed = parse_directives(
        "[mock text=%3Cb%3Ehi%3C%2Fb%3E%20%5Bthere%5D reasoning_text=why%20not]", defaults
    )
    assert (parsed.text, parsed.tokens) == ("<b>hi</b> [there]", 2)
    assert (parsed.reasoning_text, parsed.reasoning) == ("why not", 2)
    for bad in ("[mock text=a tokens=3]", "[mock reasoning_text=a reasoning=1]", "[mock text=%FF]"):
        with pytest.raises(DirectiveError):
            parse_directives(bad, defaults)


def test_new_directives_parse() -> None:
    parsed = parse_directives(
        "[mock reasoning=4 reasoning_field=reasoning finish=length error_after=2 comments=1"
        " empty_choices=1 done=0 usage=0]",
        Directives(tokens=40, delay_ms=20),
    )
    assert (parsed.reasoning, parsed.reasoning_field, parsed.finish) == (4, "reasoning", "length")
    assert (parsed.sent_tokens, parsed.ending) == (2, "error")
    assert (parsed.comments, parsed.empty_choices, parsed.done, parsed.usage) == (
        True,
        True,
        False,
        False,
    )


async def _raw_events(base: str, prompt: str, include_usage: bool = False) -> list[bytes]:
    """The SSE events exactly as sent (comment lines included), split at blank lines."""
    body: dict[str, Any] = {"model": "gpt-test", "messages": _messages(prompt), "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    async with (
        httpx.AsyncClient(timeout=5.0) as http,
        http.stream("POST", f"{base}/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event]


def _chunks(events: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(event[len(b"data: ") :]) for event in events if event.startswith(b"data: {")]


def _deltas(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(
        choice["delta"].get(field) or "" for chunk in chunks for choice in chunk["choices"]
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_streams_first_in_either_field(base: str, field: str) -> None:
    prompt = _prompt(f"[mock tokens=3 reasoning=4 reasoning_field={field} delay_ms=0]")
    chunks = _chunks(await _raw_events(base, prompt))
    fields = [key for chunk in chunks for key in chunk["choices"][0]["delta"] if key != "role"]
    assert fields == ["content"] + [field] * 4 + ["content"] * 3
    assert _deltas(chunks, field) == "".join(reasoning_tokens(prompt, 0, 4))
    assert _deltas(chunks, "content") == "".join(reply_tokens(prompt, 0, 3))
    assert reasoning_tokens(prompt, 0, 4) != reply_tokens(prompt, 0, 4)


@pytest.mark.asyncio
async def test_usage_chunk_only_when_asked(base: str) -> None:
    prompt = _prompt("[mock tokens=3 reasoning=2 delay_ms=0]")
    events = await _raw_events(base, prompt, include_usage=True)
    assert events[-1] == b"data: [DONE]\n\n"
    *_, finish, last = _chunks(events)
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert last["choices"] == []
    prompt_words = len(" ".join(m["content"] for m in _messages(prompt)).split())
    assert last["usage"] == {
        "prompt_tokens": prompt_words,
        "completion_tokens": 5,
        "total_tokens": prompt_words + 5,
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    unasked = _chunks(await _raw_events(base, _prompt("[mock tokens=3 delay_ms=0]")))
    ignored = _chunks(await _raw_events(base, _prompt("[mock tokens=3 usage=0]"), True))
    assert not any("usage" in chunk for chunk in unasked + ignored)


@pytest.mark.asyncio
@pytest.mark.parametrize("reason", ["length", "content_filter", "tool_calls"])
async def test_finish_reason_directive(client: openai.AsyncOpenAI, reason: str) -> None:
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=_messages(_prompt(f"[mock tokens=2 delay_ms=0 finish={reason}]")),
        stream=True,
    )
    chunks = [chunk async for chunk in stream]
    assert [chunk.choices[0].finish_reason for chunk in chunks] == [None, None, None, reason]


def _kind(event: bytes) -> str:
    if event == COMMENT_EVENT:
        return "comment"
    chunk = json.loads(event[len(b"data: ") :])
    if "usage" in chunk:
        return "usage"
    return "chunk" if chunk["choices"] else "empty"


@pytest.mark.asyncio
async def test_comments_empty_choices_and_no_done(base: str) -> None:
    prompt = _prompt("[mock tokens=2 delay_ms=0 comments=1 empty_choices=1 done=0]")
    events = await _raw_events(base, prompt, include_usage=True)
    kinds = [_kind(event) for event in events]
    # head, two tokens and the finish chunk each come after a comment and an empty chunk
    assert kinds == ["comment", "empty", "chunk"] * 4 + ["comment", "empty", "usage"]
    assert b"[DONE]" not in b"".join(events)
    assert _deltas(_chunks(events), "content") == "".join(reply_tokens(prompt, 0, 2))


@pytest.mark.asyncio
async def test_error_after_sends_an_error_event_and_ends(base: str) -> None:
    prompt = _prompt("[mock tokens=5 error_after=2 delay_ms=0]")
    events = await _raw_events(base, prompt, include_usage=True)
    chunks = _chunks(events)
    assert chunks[-1]["error"] == {"code": 502, "message": STREAM_ERROR_MESSAGE}
    assert chunks[-1]["choices"][0]["finish_reason"] == "error"
    assert not any("error" in chunk for chunk in chunks[:-1])
    assert b"[DONE]" not in b"".join(events)
    assert _deltas(chunks, "content") == "".join(reply_tokens(prompt, 0, 2))


@pytest.mark.asyncio
async def test_emissions_time_reasoning_apart(client: openai.AsyncOpenAI, base: str) -> None:
    prompt = _prompt("[mock tokens=2 reasoning=3 delay_ms=1]")
    await _stream_text(client, prompt, [])
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{base}/_mock/emissions", params={"contains": prompt})
    [record] = response.json()
    assert record["reasoning"] == reasoning_tokens(prompt, 0, 3)
    assert record["tokens"] == reply_tokens(prompt, 0, 2)
    assert len(record["reasoning_emitted"]) == 3
    assert len(record["emitted"]) == 2
    assert record["reasoning_emitted"][-1] <= record["emitted"][0]


@pytest.mark.asyncio
async def test_stream_matches_reply_tokens(client: openai.AsyncOpenAI) -> None:
    prompt = _prompt()
    stream = await client.chat.completions.create(
        model="gpt-test", messages=_messages(prompt), stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {chunk.model for chunk in chunks} == {"gpt-test"}
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert text == "".join(reply_tokens(prompt, 0, DEFAULT_TOKENS))


@pytest.mark.asyncio
async def test_identical_request_is_next_attempt(client: openai.AsyncOpenAI, base: str) -> None:
    prompt = _prompt()
    first: list[str] = []
    second: list[str] = []
    await _stream_text(client, prompt, first)
    await _stream_text(client, prompt, second)
    assert first == reply_tokens(prompt, 0, DEFAULT_TOKENS)
    assert second == reply_tokens(prompt, 1, DEFAULT_TOKENS)
    assert first != second
    async with httpx.AsyncClient() as http:
        logged = (await http.get(f"{base}/_mock/requests", params={"contains": prompt})).json()
    assert [entry["attempt"] for entry in logged] == [0, 1]
    assert all(entry["messages"] == _messages(prompt) for entry in logged)
    assert all(entry["model"] == "gpt-test" for entry in logged)


@pytest.mark.asyncio
async def test_tokens_directive(client: openai.AsyncOpenAI) -> None:
    prompt = _prompt("[mock tokens=3 delay_ms=0]")
    received: list[str] = []
    await _stream_text(client, prompt, received)
    assert received == reply_tokens(prompt, 0, 3)


HOSTILE = '<script>alert("x")</script>\n\n<img src=x onerror=alert(1)> [a](javascript:alert(1)) '


@pytest.mark.asyncio
async def test_a_given_text_is_streamed_word_by_word(client: openai.AsyncOpenAI) -> None:
    """The reply and its reasoning are exactly the texts given, whatever they hold."""
    prompt = helpers.prompt(
        "say", text=HOSTILE, reasoning_text="think ] [mock tokens=1]", delay_ms=0
    )
    stream = await client.chat.completions.create(
        model="gpt-test", messages=_messages(prompt), stream=True
    )
    content: list[str] = []
    reasoning: list[str] = []
    async for chunk in stream:
        if chunk.choices:
            delta = chunk.choices[0].delta.model_dump()
            content.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
    assert "".join(content) == HOSTILE
    assert "".join(reasoning) == "think ] [mock tokens=1]"
    assert [piece for piece in content if piece][:2] == ['<script>alert("x")</script>\n\n', "<img "]


@pytest.mark.asyncio
async def test_a_given_text_is_cut_like_any_reply(client: openai.AsyncOpenAI) -> None:
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        await _stream_text(
            client, helpers.prompt("cut", text="one two three", fail_after=2), received
        )
    assert received == ["one ", "two "]


@pytest.mark.asyncio
async def test_fail_after_breaks_the_stream(client: openai.AsyncOpenAI) -> None:
    prompt = _prompt("[mock tokens=10 fail_after=3 delay_ms=0]")
    received: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        await _stream_text(client, prompt, received)
    assert received == reply_tokens(prompt, 0, 3)


@pytest.mark.asyncio
async def test_status_directive(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as raised:
        await _stream_text(client, _prompt("[mock status=500]"), [])
    assert raised.value.status_code == 500
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["type"] == "mock_error"


@pytest.mark.asyncio
async def test_bad_directive_is_a_400(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        await _stream_text(client, _prompt("[mock tokenz=3]"), [])


@pytest.mark.asyncio
async def test_hang_after_times_out_the_client(client: openai.AsyncOpenAI) -> None:
    prompt = _prompt("[mock hang_after=2 delay_ms=0]")
    received: list[str] = []
    with pytest.raises(openai.APITimeoutError):
        await _stream_text(client.with_options(timeout=0.5), prompt, received)
    assert received == reply_tokens(prompt, 0, 2)


@pytest.mark.asyncio
async def test_emissions_time_each_token(client: openai.AsyncOpenAI, base: str) -> None:
    prompt = _prompt("[mock tokens=6 delay_ms=20]")
    await _stream_text(client, prompt, [])
    async with httpx.AsyncClient() as http:
        records = (await http.get(f"{base}/_mock/emissions", params={"contains": prompt})).json()
    [record] = records
    assert (record["key"], record["attempt"]) == (prompt, 0)
    assert record["tokens"] == reply_tokens(prompt, 0, 6)
    emitted = record["emitted"]
    assert len(emitted) == 6
    assert emitted == sorted(emitted)
    assert emitted[-1] - emitted[0] >= 5 * 0.020 - 0.005


@pytest.mark.asyncio
async def test_disconnect_stops_the_stream(client: openai.AsyncOpenAI, base: str) -> None:
    prompt = _prompt("[mock tokens=1000 delay_ms=5]")
    stream = await client.chat.completions.create(
        model="gpt-test", messages=_messages(prompt), stream=True
    )
    async for chunk in stream:
        if chunk.choices[0].delta.content:
            break
    await stream.close()
    counts = []
    async with httpx.AsyncClient() as http:
        for _ in range(2):
            await asyncio.sleep(0.2)
            response = await http.get(f"{base}/_mock/emissions", params={"contains": prompt})
            counts.append(len(response.json()[0]["emitted"]))
    assert counts[0] == counts[1] < 1000


@pytest.mark.asyncio
async def test_non_streaming_completion(client: openai.AsyncOpenAI) -> None:
    prompt = _prompt()
    completion = await client.chat.completions.create(model="gpt-test", messages=_messages(prompt))
    assert completion.choices[0].message.content == "".join(reply_tokens(prompt, 0, DEFAULT_TOKENS))
    assert completion.usage is not None
    assert completion.usage.completion_tokens == DEFAULT_TOKENS


@pytest.mark.asyncio
async def test_non_streaming_reasoning_and_finish(base: str) -> None:
    prompt = _prompt("[mock tokens=2 reasoning=2 reasoning_field=reasoning finish=length]")
    body = {"model": "gpt-test", "messages": _messages(prompt)}
    async with httpx.AsyncClient() as http:
        completion = (await http.post(f"{base}/v1/chat/completions", json=body)).json()
    [choice] = completion["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["reasoning"] == "".join(reasoning_tokens(prompt, 0, 2))
    assert completion["usage"]["completion_tokens"] == 4


@pytest.mark.asyncio
async def test_models_and_reset(client: openai.AsyncOpenAI, base: str) -> None:
    models = await client.models.list()
    assert [model.id for model in models.data] == ["mock-model"]
    prompt = _prompt("[mock tokens=1 delay_ms=0]")
    await _stream_text(client, prompt, [])
    async with httpx.AsyncClient() as http:
        assert (await http.delete(f"{base}/_mock/requests")).is_success
        assert (await http.get(f"{base}/_mock/requests")).json() == []
        assert (await http.get(f"{base}/_mock/emissions")).json() == []
    received: list[str] = []
    await _stream_text(client, prompt, received)
    assert received == reply_tokens(prompt, 0, 1)
