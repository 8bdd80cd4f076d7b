"""Duplicates: a job delivered again, and a POST retried with the same Idempotency-Key.

Both happen in real life (a redelivery after a crash or a reconnection, an outbox publishing a
job the broker had in fact confirmed, a client retrying after a timeout); neither may call the
model twice or create a second reply.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from shared.broker import CHAT_QUEUE, DEAD_LETTER_QUEUE, publish_job
from shared.events import FINISHED_EVENT
from shared.schemas import ChatAccepted, ChatJob, Status
from tests.faults.audit import Expect, ResultBook, whole_reply
from tests.faults.broker_control import queue_depths
from tests.faults.clients import clients, unique
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.trial import fault_trial
from tests.helpers import ApiClient, eventually, new_conversation_id, prompt

pytestmark = pytest.mark.faults

stack = stack_fixture(
    "dup",
    "One responder, so a duplicate job of a reply in flight reaches the responder writing it.",
    responders=1,
    apis=2,
    REPLY_LEASE_SECONDS="2",
)


@pytest.fixture
async def channel(stack: FaultStack) -> AsyncIterator[AbstractChannel]:
    """A publisher-confirmed channel on the stack's vhost, as the API publishes jobs."""
    connection = await aio_pika.connect(stack.broker.url)
    async with connection:
        yield await connection.channel()


def job_of(accepted: ChatAccepted) -> ChatJob:
    return ChatJob(
        conversation_id=accepted.conversation_id,
        user_message_id=accepted.user_message_id,
        message_id=accepted.message_id,
    )


async def drained(stack: FaultStack, timeout: float = 15.0) -> None:
    """Every job settled: nothing ready, nothing unacknowledged, nothing dead-lettered."""

    def empty() -> bool:
        depths = queue_depths(stack.vhost)
        return depths.get(CHAT_QUEUE) == (0, 0) and depths.get(DEAD_LETTER_QUEUE) == (0, 0)

    try:
        await eventually(empty, timeout, interval=0.3, what="the queues to drain")
    except AssertionError as error:
        raise AssertionError(f"{error}: (ready, unacked) = {queue_depths(stack.vhost)}") from None


async def undrained(stack: FaultStack, timeout: float) -> str | None:
    """A trial's problem if the queues do not drain within `timeout` once its replies ended."""
    try:
        await drained(stack, timeout)
    except AssertionError as error:
        return f"after the replies finished: {error}"
    return None


async def test_redelivered_finished_reply_is_acked_without_calling_the_model(
    stack: FaultStack, channel: AbstractChannel, results: ResultBook
) -> None:
    """A job for a completed or failed reply changes nothing and is acknowledged."""
    async with (
        results.fault("duplicate job of a finished reply") as tally,
        fault_trial(stack, tally) as trial,
    ):
        api, mock, subscriber = trial.api, trial.mock, trial.subscriber
        done_text = prompt("done", tokens=10, delay_ms=5)
        failed_text = prompt("broken", status=500)
        done, completed = await api.ask(done_text, trial.conversation_id)
        broken, failed = await api.ask(failed_text, trial.conversation_id)
        assert (completed.status, failed.status) == (Status.COMPLETED, Status.FAILED)
        await subscriber.finished(broken.message_id)
        calls = {text: len(await mock.requests(text)) for text in (done_text, failed_text)}
        await drained(stack)
        for accepted in (done, broken, done, broken):
            await publish_job(channel, job_of(accepted))
            await drained(stack)
        # Replies are written in order: once this one is done, anything the duplicates
        # had set off would have been published, and seen, before it.
        _, after = await api.ask(prompt("after", tokens=3, delay_ms=0), trial.conversation_id)
        await subscriber.finished(after.id)
        trial.expect(
            Expect(
                done.message_id,
                texts=(completed.message,),
                model_calls=calls[done_text],
                prompt=done_text,
            ),
            Expect(
                broken.message_id,
                statuses=(Status.FAILED,),
                model_calls=calls[failed_text],
                prompt=failed_text,
            ),
            Expect(after.id),
        )
        for accepted, before in ((done, completed), (broken, failed)):
            now = await api.message(trial.conversation_id, accepted.message_id)
            if now != before:
                trial.problems.append(f"a duplicate job changed {before!r} into {now!r}")
            events = subscriber.events_of(accepted.message_id)
            if events[-1]["type"] not in FINISHED_EVENT.values():
                trial.problems.append(f"events after the end of {accepted.message_id}: {events}")
    assert not trial.problems, "\n".join(trial.problems)


async def test_jobs_for_unknown_or_malformed_replies_do_not_stick(
    stack: FaultStack, channel: AbstractChannel
) -> None:
    """A job for a reply that is not stored is acknowledged; an unreadable one dead-lettered."""
    await drained(stack)
    ghost = ChatJob(conversation_id=unique("ghost"), user_message_id="nobody", message_id="nothing")
    await publish_job(channel, ghost)
    await channel.default_exchange.publish(
        aio_pika.Message(b"not a job", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=CHAT_QUEUE,
    )

    def settled() -> dict[str, tuple[int, int]] | None:
        depths = queue_depths(stack.vhost)
        ok = depths.get(CHAT_QUEUE) == (0, 0) and depths.get(DEAD_LETTER_QUEUE) == (1, 0)
        return depths if ok else None

    await eventually(settled, 15, interval=0.3, what="the junk to be settled")
    queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
    letter = await queue.get(timeout=5)
    assert letter is not None and letter.body == b"not a job"
    await letter.ack()


async def purge_leaked_jobs(stack: FaultStack, channel: AbstractChannel) -> None:
    """Drop what a responder leaked; restarting is not enough, it leaks the redeliveries again.

    With every responder stopped, its unacknowledged deliveries are ready again; they are
    duplicates of finished replies, so purging them loses nothing.
    """
    for process in stack.live_responders():
        await asyncio.to_thread(process.stop)
    await eventually(
        lambda: queue_depths(stack.vhost).get(CHAT_QUEUE, (0, 1))[1] == 0,
        15,
        interval=0.3,
        what="the stopped responders' deliveries to be requeued",
    )
    queue = await channel.declare_queue(CHAT_QUEUE, passive=True)
    await queue.purge()
    await asyncio.to_thread(stack.start_responder)
    await drained(stack)


@pytest.fixture
async def clean_queues(stack: FaultStack, channel: AbstractChannel) -> AsyncIterator[None]:
    """Empty queues before and after the test, so what it leaked does not reach the next one.

    (A failure here would show as the xfail of the test: the cleanup must not fail.)
    """
    await drained(stack)
    yield
    try:
        await drained(stack, timeout=3)
    except AssertionError:
        await purge_leaked_jobs(stack, channel)


@pytest.mark.usefixtures("clean_queues")
async def test_burst_of_duplicate_jobs_of_a_finished_reply_is_all_acked(
    stack: FaultStack, channel: AbstractChannel, results: ResultBook
) -> None:
    """Duplicates arriving together (a redelivery storm) are each acknowledged."""
    async with (
        results.fault("burst of 3 duplicate jobs of a finished reply") as tally,
        fault_trial(stack, tally, watchers=0, trials=3) as trial,
    ):
        text = prompt("burst", tokens=5, delay_ms=0)
        accepted, _ = await trial.api.ask(text, trial.conversation_id)
        await drained(stack)
        for _ in range(3):
            await publish_job(channel, job_of(accepted))
        trial.expect(Expect(accepted.message_id, model_calls=1, prompt=text))
        trial.once_settled(lambda: undrained(stack, timeout=10))
    assert not trial.problems, "\n".join(trial.problems)


@pytest.mark.usefixtures("clean_queues")
async def test_duplicate_job_of_a_reply_in_flight_is_settled_too(
    stack: FaultStack, channel: AbstractChannel, results: ResultBook
) -> None:
    """The reply is written once, and both deliveries are acknowledged when it is done.

    This is what an outbox republish of a job the broker had in fact confirmed looks like.
    """
    async with (
        results.fault("duplicate job of a reply in flight") as tally,
        fault_trial(stack, tally) as trial,
    ):
        text = prompt("inflight", tokens=60, delay_ms=30)
        accepted = await trial.post(text)
        await trial.subscriber.streaming(accepted.message_id, seq=3)
        await publish_job(channel, job_of(accepted))
        trial.expect(whole_reply(accepted.message_id, text, 60))
        trial.once_settled(lambda: undrained(stack, timeout=10))
    assert not trial.problems, "\n".join(trial.problems)


async def post_with_key(
    api: ApiClient, key: str, body: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    response = await api.http.post("/chat", json=body, headers={"Idempotency-Key": key})
    return response.status_code, response.json()


async def test_retried_post_with_the_same_idempotency_key_gets_one_reply(
    stack: FaultStack, results: ResultBook
) -> None:
    """Same key: the same answer every time, before and after the reply finished."""
    async with (
        results.fault("POST retried with the same Idempotency-Key") as tally,
        fault_trial(stack, tally, watchers=0, trials=2) as trial,
    ):
        api = trial.api
        text = prompt("idem", tokens=20, delay_ms=10)
        body = {"message": text, "conversationId": trial.conversation_id}
        key = unique("key")
        first = await post_with_key(api, key, body)
        again = await post_with_key(trial.apis[1], key, body)
        accepted = ChatAccepted.model_validate(first[1])
        await api.finished(trial.conversation_id, accepted.message_id)
        late = await post_with_key(api, key, body)
        assert first[0] == again[0] == late[0] == 202, (first, again, late)
        assert first[1] == again[1] == late[1]
        trial.expect(Expect(accepted.message_id, model_calls=1, prompt=text))
    assert not trial.problems, "\n".join(trial.problems)


@pytest.mark.parametrize("with_conversation_id", [True, False], ids=["given-id", "new-id"])
async def test_concurrent_posts_with_the_same_idempotency_key_get_one_reply(
    stack: FaultStack, results: ResultBook, with_conversation_id: bool
) -> None:
    """Racing POSTs on two API instances all get the one turn that was stored."""
    async with results.fault(
        f"concurrent POSTs, one Idempotency-Key ({with_conversation_id=})"
    ) as tally:
        async with clients(stack) as (apis, _):
            text = prompt("race", tokens=5, delay_ms=5)
            body = {"message": text}
            if with_conversation_id:
                body["conversationId"] = new_conversation_id()
            key = unique("race-key")
            answers = await asyncio.gather(
                *(post_with_key(apis[index % 2], key, body) for index in range(6))
            )
        assert [status for status, _ in answers] == [202] * len(answers), answers
        assert all(answer == answers[0][1] for _, answer in answers), answers
        accepted = ChatAccepted.model_validate(answers[0][1])
        retries = len(answers) - 1
        async with fault_trial(
            stack, tally, accepted.conversation_id, watchers=0, trials=retries
        ) as trial:
            trial.expect(Expect(accepted.message_id, model_calls=1, prompt=text))
            stored = await trial.api.conversation(accepted.conversation_id)
            if [message.id for message in stored.messages] != [
                accepted.user_message_id,
                accepted.message_id,
            ]:
                trial.problems.append(f"the conversation holds {stored.messages}")
    assert not trial.problems, "\n".join(trial.problems)
