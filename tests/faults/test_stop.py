"""Stop generation: POST .../stop ends a reply early, wherever it is being written.

The reply keeps its text so far and ends `completed` with `stopped: true`; the model stream is
closed (the mock stops emitting); stopping twice, or stopping a finished reply, changes nothing.
"""

import asyncio
import time

import httpx
import pytest

from shared.broker import CHAT_QUEUE
from shared.schemas import Message, Status
from tests.faults.support import (
    Expect,
    FaultStack,
    LiveSubscriber,
    MockProbe,
    ResultBook,
    audit,
    clients,
    new_conversation,
    queue_depths,
    save_tally,
    settle,
    settle_and_audit,
    stack_fixture,
    unique,
    watched_post,
)
from tests.helpers import ApiClient, eventually, expected_reply, new_conversation_id, prompt

pytestmark = pytest.mark.faults

TOKENS = 200
DELAY_MS = 30
MAX_TRIALS = 6

stack = stack_fixture(
    "stop",
    "Two responders: a stop must reach whichever one writes the reply.",
    responders=2,
    REPLY_LEASE_SECONDS="2",
)


async def stop(api: ApiClient, conversation_id: str, message_id: str) -> httpx.Response:
    return await api.http.post(f"/conversations/{conversation_id}/messages/{message_id}/stop")


async def emissions_settled(mock: MockProbe, text: str) -> int:
    """Tokens the mock sent for `text`, once no new one went out for a while (or 5 s passed)."""
    quiet = 0.5
    last = -1
    last_change = time.monotonic()
    deadline = last_change + 5
    while time.monotonic() < deadline:
        records = await mock.emissions(text)
        count = sum(len(record["emitted"]) for record in records)
        if count != last:
            last, last_change = count, time.monotonic()
        elif time.monotonic() - last_change > quiet:
            break
        await asyncio.sleep(0.05)
    return last


async def test_stop_mid_stream_keeps_the_text_on_either_responder(
    stack: FaultStack, results: ResultBook
) -> None:
    """Stopped mid-stream: partial text kept everywhere, model stream closed; both holders."""
    tally = results.new("stop mid-stream (2 responders)")
    started = time.monotonic()
    holders: set[str] = set()
    problems: list[str] = []
    sent_counts: list[int] = []
    async with clients(stack) as (apis, mock):
        api = apis[0]
        for trial in range(MAX_TRIALS):
            if trial >= 4 and len(holders) == 2:
                break
            conversation_id = new_conversation_id()
            text = prompt(f"stop-{trial}", tokens=TOKENS, delay_ms=DELAY_MS)
            full = expected_reply(text, TOKENS)
            async with watched_post(api, conversation_id, text) as (subscriber, accepted):
                reply_id = accepted.message_id
                await subscriber.streaming(reply_id, seq=5)
                (model,) = await mock.models_asked(text)
                holders.add(model)
                response = await stop(api, conversation_id, reply_id)
                assert response.status_code == 200, response.text
                stopped = Message.model_validate(response.json())
                problems += await settle_and_audit(
                    api,
                    conversation_id,
                    Expect(reply_id, texts=(stopped.message,), model_calls=1, prompt=text),
                    tally,
                    [subscriber],
                    mock,
                )
                final = subscriber.final(reply_id)
            sent = await emissions_settled(mock, text)
            sent_counts.append(sent)
            if (stopped.status, stopped.stopped) != (Status.COMPLETED, True):
                problems.append(f"trial {trial}: stop answered {stopped!r}")
            if not (0 < len(stopped.message) < len(full) and full.startswith(stopped.message)):
                problems.append(
                    f"trial {trial}: kept {stopped.message!r}, not a prefix of the reply"
                )
            if final["type"] != "message.completed" or not final["message"]["stopped"]:
                problems.append(f"trial {trial}: subscribers got {final}")
            if not sent < TOKENS:
                problems.append(
                    f"trial {trial}: the mock sent all {sent} tokens: stream not closed"
                )
    tally.notes.append(f"replies were written by {sorted(holders)}")
    tally.notes.append(f"the mock sent {sent_counts} of {TOKENS} tokens before its stream closed")
    save_tally(results, tally, time.monotonic() - started)
    assert not problems, "\n".join(problems)
    assert len(holders) == 2, f"only {holders} wrote the stopped replies; both should have"


async def test_stopping_a_finished_or_unknown_reply(stack: FaultStack) -> None:
    """A finished reply: 200 and unchanged, twice. Unknown ids, or a user message: 404."""
    async with clients(stack) as (apis, _):
        api = apis[0]
        text = prompt("finished", tokens=5, delay_ms=0)
        accepted, reply = await api.ask(text, new_conversation_id())
        conversation_id = accepted.conversation_id
        for _ in range(2):
            response = await stop(api, conversation_id, accepted.message_id)
            assert response.status_code == 200, response.text
            assert Message.model_validate(response.json()) == reply
        assert await api.message(conversation_id, accepted.message_id) == reply
        for cid, mid in (
            (conversation_id, unique("nothing")),
            (conversation_id, accepted.user_message_id),
            (new_conversation_id(), accepted.message_id),
        ):
            response = await stop(api, cid, mid)
            assert response.status_code == 404, (cid, mid, response.text)


async def test_stopping_a_queued_reply_ends_it_before_it_starts(
    stack: FaultStack, results: ResultBook
) -> None:
    """A reply still waiting its turn is ended at once, empty, and the model never asked."""
    tally = results.new("stop a reply still queued behind another")
    started = time.monotonic()
    async with new_conversation(stack) as (api, mock, conversation_id):
        first_text = prompt("first", tokens=60, delay_ms=DELAY_MS)
        queued_text = prompt("queued", tokens=10, delay_ms=0)
        async with LiveSubscriber.open(api.ws_url, conversation_id) as subscriber:
            first = await api.post_chat(first_text, conversation_id)
            await subscriber.streaming(first.message_id, seq=2)
            queued = await api.post_chat(queued_text, conversation_id)
            response = await stop(api, conversation_id, queued.message_id)
            assert response.status_code == 200, response.text
            stopped = Message.model_validate(response.json())
            problems = await settle(api, conversation_id, first.message_id, [subscriber])
            problems += await settle(api, conversation_id, queued.message_id, [subscriber])
            await eventually(
                lambda: queue_depths(stack.vhost).get(CHAT_QUEUE) == (0, 0),
                15,
                interval=0.3,
                what="the queued reply's job to be settled",
            )
            tally.trials += 1
            problems += await audit(
                api,
                conversation_id,
                [
                    Expect(first.message_id, texts=(expected_reply(first_text, 60),)),
                    Expect(queued.message_id, texts=("",), model_calls=0, prompt=queued_text),
                ],
                tally,
                [subscriber],
                mock,
            )
            final = subscriber.final(queued.message_id)
    save_tally(results, tally, time.monotonic() - started)
    assert (stopped.status, stopped.stopped, stopped.message) == (Status.COMPLETED, True, "")
    assert final["type"] == "message.completed" and final["message"]["stopped"], final
    assert not problems, "\n".join(problems)
