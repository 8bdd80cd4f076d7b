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
from tests.faults.audit import Expect, ResultBook
from tests.faults.broker_control import queue_depths
from tests.faults.clients import MockProbe, clients, unique
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.trial import fault_trial
from tests.helpers import ApiClient, eventually, expected_reply, new_conversation_id, prompt
from tests.metrics import grown, responder_metrics, summed

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
    holders: set[str] = set()
    problems: list[str] = []
    sent_counts: list[int] = []
    metrics = responder_metrics(stack.live_responders())
    before = await summed(metrics)
    trials = 0
    async with results.fault("stop mid-stream (2 responders)") as tally:
        for trial_number in range(MAX_TRIALS):
            if trial_number >= 4 and len(holders) == 2:
                break
            trials += 1
            async with fault_trial(stack, tally) as trial:
                text = prompt(f"stop-{trial_number}", tokens=TOKENS, delay_ms=DELAY_MS)
                full = expected_reply(text, TOKENS)
                reply_id = (await trial.post(text)).message_id
                await trial.subscriber.streaming(reply_id, seq=5)
                (model,) = await trial.mock.models_asked(text)
                holders.add(model)
                response = await stop(trial.api, trial.conversation_id, reply_id)
                assert response.status_code == 200, response.text
                stopped = Message.model_validate(response.json())
                trial.expect(Expect(reply_id, texts=(stopped.message,), model_calls=1, prompt=text))
                sent = await emissions_settled(trial.mock, text)
            problems += trial.problems
            final = trial.subscriber.final(reply_id)
            sent_counts.append(sent)
            if (stopped.status, stopped.stopped) != (Status.COMPLETED, True):
                problems.append(f"trial {trial_number}: stop answered {stopped!r}")
            if not (0 < len(stopped.message) < len(full) and full.startswith(stopped.message)):
                problems.append(
                    f"trial {trial_number}: kept {stopped.message!r}, not a prefix of the reply"
                )
            if final["type"] != "message.completed" or not final["message"]["stopped"]:
                problems.append(f"trial {trial_number}: subscribers got {final}")
            if not sent < TOKENS:
                problems.append(
                    f"trial {trial_number}: the mock sent all {sent} tokens: stream not closed"
                )
        tally.notes.append(f"replies were written by {sorted(holders)}")
        tally.notes.append(
            f"the mock sent {sent_counts} of {TOKENS} tokens before its stream closed"
        )
    assert not problems, "\n".join(problems)
    assert len(holders) == 2, f"only {holders} wrote the stopped replies; both should have"
    after = await summed(metrics)
    assert grown(before, after, "chat_replies_total", status="stopped") == trials
    assert grown(before, after, "chat_replies_total", status="completed") == 0


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
    async with (
        results.fault("stop a reply still queued behind another") as tally,
        fault_trial(stack, tally) as trial,
    ):
        first_text = prompt("first", tokens=60, delay_ms=DELAY_MS)
        queued_text = prompt("queued", tokens=10, delay_ms=0)
        first = await trial.post(first_text)
        await trial.subscriber.streaming(first.message_id, seq=2)
        queued = await trial.post(queued_text)
        response = await stop(trial.api, trial.conversation_id, queued.message_id)
        assert response.status_code == 200, response.text
        stopped = Message.model_validate(response.json())
        trial.expect(
            Expect(first.message_id, texts=(expected_reply(first_text, 60),)),
            Expect(queued.message_id, texts=("",), model_calls=0, prompt=queued_text),
        )
        await eventually(
            lambda: queue_depths(stack.vhost).get(CHAT_QUEUE) == (0, 0),
            15,
            interval=0.3,
            what="the queued reply's job to be settled",
        )
    final = trial.subscriber.final(queued.message_id)
    assert (stopped.status, stopped.stopped, stopped.message) == (Status.COMPLETED, True, "")
    assert final["type"] == "message.completed" and final["message"]["stopped"], final
    assert not trial.problems, "\n".join(trial.problems)
