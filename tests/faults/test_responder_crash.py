"""A responder SIGKILLed mid-reply: the reply restarts cleanly elsewhere, or fails for good.

The mock writes a different text on each attempt of the same request, so a reply that mixed
two attempts, or kept the dead attempt's text, cannot pass for the right one.
"""

import asyncio
import contextlib
from dataclasses import dataclass

import aio_pika
import pytest

from devstack.processes import Process
from shared.broker import CHAT_QUEUE, DEAD_LETTER_QUEUE
from shared.schemas import ChatJob, Message, Status
from tests.faults.audit import Expect, ResultBook
from tests.faults.broker_control import queue_depths
from tests.faults.clients import clients
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.subscribers import LiveSubscriber
from tests.faults.trial import fault_trial
from tests.helpers import eventually, expected_reply, prompt
from tests.metrics import Samples, grown, responder_metrics, scrape

pytestmark = pytest.mark.faults

TRIALS = 3
TOKENS = 80
DELAY_MS = 30
MAX_ATTEMPTS = 2

stack = stack_fixture(
    "crash",
    """Short lease and two attempts at most; slow progress writes (STORE_FLUSH_SECONDS=2) make
    MongoDB's copy of a reply lag its live stream, as it may at any flush interval.""",
    responders=3,
    REPLY_LEASE_SECONDS="2",
    REPLY_MAX_ATTEMPTS=str(MAX_ATTEMPTS),
    SHUTDOWN_GRACE_SECONDS="1",
    STORE_FLUSH_SECONDS="2",
)


async def keep_responders(stack: FaultStack, count: int) -> None:
    """Replace the responders earlier trials killed (off the event loop: it takes a while)."""
    while len(stack.live_responders()) < count:
        await asyncio.to_thread(stack.start_responder)


async def responder_samples(stack: FaultStack) -> dict[str, Samples]:
    """Each live responder's metrics, by where it serves them."""
    return {url: await scrape(url) for url in responder_metrics(stack.live_responders())}


def survivors_grown(before: dict[str, Samples], after: dict[str, Samples], name: str) -> float:
    """How much a counter rose on the responders alive now (a killed one's count is gone)."""
    return sum(grown(before.get(url, {}), samples, name) for url, samples in after.items())


async def test_killed_responders_reply_restarts_from_seq_0_and_completes(
    stack: FaultStack, results: ResultBook
) -> None:
    """The dead attempt's text is dropped and the retry's whole text is the reply, every time."""
    problems: list[str] = []
    async with results.fault("responder SIGKILL mid-reply (2 responders)") as tally:
        for trial_number in range(TRIALS):
            await keep_responders(stack, 2)
            before = await responder_samples(stack)
            async with fault_trial(stack, tally) as trial:
                early = trial.subscriber
                text = prompt(f"crash-{trial_number}", tokens=TOKENS, delay_ms=DELAY_MS)
                reply_id = (await trial.post(text)).message_id
                first = await early.streaming(reply_id, seq=5)
                asked = await trial.mock.models_asked(text)
                assert len(asked) == 1, asked
                stack.responder_for(asked[0]).kill()
                await trial.subscribe()
                retry_text = expected_reply(text, TOKENS, attempt=1)
                trial.expect(Expect(reply_id, texts=(retry_text,), model_calls=2, prompt=text))
            problems += trial.problems
            async with clients(stack) as (apis, mock):
                asked = await mock.models_asked(text)
                stored = await apis[0].message(trial.conversation_id, reply_id)
            if len(asked) == 2 and asked[0] == asked[1]:
                problems.append(f"trial {trial_number}: the killed responder answered again")
            restarts = [
                event
                for event in early.restarts(reply_id)
                if event["message"]["attempt"] > first.attempt
            ]
            if not restarts:
                problems.append(
                    f"trial {trial_number}: no message.updated restarting {reply_id} from seq 0 "
                    f"with an attempt above {first.attempt}: {early.timeline()[-8:]}"
                )
            if stored.message == expected_reply(text, TOKENS, attempt=0):
                problems.append(f"trial {trial_number}: the reply kept the killed attempt's text")
            after = await responder_samples(stack)
            counted = {
                name: survivors_grown(before, after, name)
                for name in ("chat_job_redeliveries_total", "chat_lease_takeovers_total")
            }
            if counted != {"chat_job_redeliveries_total": 1, "chat_lease_takeovers_total": 1}:
                problems.append(f"trial {trial_number}: the survivors' metrics moved by {counted}")
    assert not problems, "\n".join(problems)


@dataclass
class DoomedReply:
    """What the bounded-attempts scenario left behind, for the tests that judge it."""

    prompt: str
    stored: Message
    subscriber_problems: list[str]
    dead_letters: list[ChatJob]
    depths: dict[str, tuple[int, int]]
    model_calls: int
    late_snapshot: Message | None
    last_model: str
    """The model the last attempt's responder asked (each responder names its own)."""


@pytest.fixture(scope="module")
async def doomed(stack: FaultStack, results: ResultBook) -> DoomedReply:
    """Kill the responder writing a reply on each of its REPLY_MAX_ATTEMPTS attempts."""
    await keep_responders(stack, 3)
    async with results.fault(f"responder SIGKILL on every attempt (max {MAX_ATTEMPTS})") as tally:
        async with fault_trial(stack, tally) as trial:
            subscriber = trial.subscriber
            text = prompt("doomed", tokens=400, delay_ms=DELAY_MS)
            reply_id = (await trial.post(text)).message_id
            killed: list[Process] = []
            for attempt in range(1, MAX_ATTEMPTS + 1):

                def streaming_attempt(s: LiveSubscriber, n: int = attempt) -> bool:
                    return s.attempt(reply_id) >= n and s.seq(reply_id) >= 3

                await subscriber.wait(
                    streaming_attempt, what=f"attempt {attempt} of {reply_id} to stream"
                )
                asked = await trial.mock.models_asked(text)
                assert len(asked) == attempt, asked
                holder = stack.responder_for(asked[-1])
                assert holder not in killed, "a killed responder answered"
                holder.kill()
                killed.append(holder)
            trial.expect(Expect(reply_id, statuses=(Status.FAILED,), model_calls=2, prompt=text))
        async with clients(stack) as (apis, mock):
            api = apis[0]
            async with LiveSubscriber.open(api.ws_url, trial.conversation_id) as late:
                late_snapshot = late.get(reply_id)
                tally.notes.append(f"a new subscriber's snapshot shows it as {late_snapshot!r}")
            stored = await api.message(trial.conversation_id, reply_id)

            def dead_lettered() -> dict[str, tuple[int, int]] | None:
                depths = queue_depths(stack.vhost)
                done = depths.get(DEAD_LETTER_QUEUE) == (1, 0) and depths.get(CHAT_QUEUE) == (0, 0)
                return depths if done else None

            with contextlib.suppress(AssertionError):
                await eventually(dead_lettered, timeout=20, interval=0.5, what="the dead letter")
            depths = queue_depths(stack.vhost)
            letters = []
            connection = await aio_pika.connect(stack.broker.url)
            async with connection:
                channel = await connection.channel()
                queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
                while (letter := await queue.get(timeout=5, fail=False)) is not None:
                    letters.append(ChatJob.model_validate_json(letter.body))
                    await letter.ack()
            calls = len(await mock.requests(text))
    return DoomedReply(
        text, stored, trial.problems, letters, depths, calls, late_snapshot, asked[-1]
    )


async def test_reply_failing_on_every_attempt_ends_failed_and_dead_lettered(
    doomed: DoomedReply,
) -> None:
    """After REPLY_MAX_ATTEMPTS attempts the reply is failed with its text, not retried again."""
    stored = doomed.stored
    assert stored.status == Status.FAILED, stored
    assert stored.error and f"{MAX_ATTEMPTS} attempts" in stored.error, stored
    assert (stored.finish_reason, stored.model) == ("error", doomed.last_model), stored
    assert expected_reply(doomed.prompt, 400, attempt=1).startswith(stored.message), (
        "the text kept is not a prefix of the last attempt's text"
    )
    assert doomed.model_calls == MAX_ATTEMPTS, "the model was asked again after the last attempt"
    assert [job.message_id for job in doomed.dead_letters] == [stored.id], doomed.dead_letters
    assert doomed.depths.get(CHAT_QUEUE) == (0, 0), doomed.depths


async def test_subscribers_see_the_reply_fail_with_the_stored_text(doomed: DoomedReply) -> None:
    """The failure reaches live and new subscribers with exactly the text GET shows."""
    assert not doomed.subscriber_problems, "\n".join(doomed.subscriber_problems)
    assert doomed.late_snapshot is not None
    assert doomed.late_snapshot.status == Status.FAILED, doomed.late_snapshot
    assert doomed.late_snapshot.message == doomed.stored.message
