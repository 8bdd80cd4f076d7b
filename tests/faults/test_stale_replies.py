"""Stale replies: an upstream that hangs, and a responder that hangs (SIGSTOP).

Neither is noticed by the broker (the connection stays open), so it is the model timeout and
the lease that must end the reply, with the text received so far kept.
"""

import os
import signal
import time
from dataclasses import dataclass

import pytest

from services.responder.leases import ABANDONED
from shared.broker import CHAT_QUEUE
from shared.schemas import Message, Status
from tests.faults.audit import Expect, ResultBook
from tests.faults.broker_control import queue_depths
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.subscribers import LiveSubscriber
from tests.faults.trial import fault_trial
from tests.helpers import eventually, expected_reply, prompt

pytestmark = pytest.mark.faults

LEASE = 2.0
MODEL_TIMEOUT = 2.0
TOKENS = 300
DELAY_MS = 30

stack = stack_fixture(
    "stale",
    "Short lease and model timeout; slow progress writes, as a busy database would allow.",
    responders=2,
    REPLY_LEASE_SECONDS=str(LEASE),
    OPENAI_TIMEOUT_SECONDS=str(MODEL_TIMEOUT),
    STORE_FLUSH_SECONDS="2",
)


async def test_hung_upstream_fails_the_reply_after_the_model_timeout(
    stack: FaultStack, results: ResultBook
) -> None:
    """A live responder keeps its lease, so the model timeout ends the reply, text kept."""
    async with (
        results.fault("model stream hangs (timeout 2 s)") as tally,
        fault_trial(stack, tally) as trial,
    ):
        text = prompt("hang", tokens=50, delay_ms=DELAY_MS, hang_after=3)
        started = time.monotonic()
        accepted = await trial.post(text)
        trial.expect(
            Expect(
                accepted.message_id,
                statuses=(Status.FAILED,),
                texts=(expected_reply(text, 3),),
                model_calls=1,
                prompt=text,
            )
        )
        await trial.api.finished(trial.conversation_id, accepted.message_id, 30)
        elapsed = time.monotonic() - started
        stored = await trial.api.message(trial.conversation_id, accepted.message_id)
        tally.notes.append(f"the hung reply failed {elapsed:.1f}s after the POST")
    assert not trial.problems, "\n".join(trial.problems)
    assert stored.error == "model API timed out", stored
    assert elapsed < MODEL_TIMEOUT + 8, f"the hung reply took {elapsed:.1f}s to fail"


@dataclass
class FrozenReply:
    """What the SIGSTOP scenario left behind, for the tests that judge it."""

    prompt: str
    model: str
    """The model the frozen responder asked (each responder of a fault stack names its own)."""
    ended: Message
    ended_after: float
    after_resume: Message
    subscriber_problems: list[str]
    events_after_final: list[dict[str, object]]
    late_snapshot: Message | None
    depths: dict[str, tuple[int, int]]


@pytest.fixture(scope="module")
async def frozen(stack: FaultStack, results: ResultBook) -> FrozenReply:
    """SIGSTOP the responder writing a reply; another one's sweeper must end it; then SIGCONT."""
    async with (
        results.fault("responder SIGSTOPped mid-reply") as tally,
        fault_trial(stack, tally) as trial,
    ):
        text = prompt("frozen", tokens=TOKENS, delay_ms=DELAY_MS)
        reply_id = (await trial.post(text)).message_id
        await trial.subscriber.streaming(reply_id, seq=5)
        (model,) = await trial.mock.models_asked(text)
        holder = stack.responder_for(model)
        os.kill(holder.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            ended = await trial.api.finished(trial.conversation_id, reply_id, timeout=8 * LEASE)
            ended_after = time.monotonic() - stopped_at
            trial.expect(Expect(reply_id, statuses=(Status.FAILED,), model_calls=1, prompt=text))
            async with LiveSubscriber.open(trial.api.ws_url, trial.conversation_id) as late:
                late_snapshot = late.get(reply_id)
            tally.notes.append(f"a new subscriber's snapshot shows it as {late_snapshot!r}")
        finally:
            os.kill(holder.pid, signal.SIGCONT)

        def settled() -> dict[str, tuple[int, int]] | None:
            depths = queue_depths(stack.vhost)
            return depths if depths.get(CHAT_QUEUE) == (0, 0) else None

        # The resumed responder finishes its stream (the mock kept writing), finds the
        # reply ended, and must neither change it nor show more of it.
        depths = await eventually(settled, 30, interval=0.5, what="the job to be settled")
        assert depths is not None
        after_resume = await trial.api.message(trial.conversation_id, reply_id)
        tally.notes.append(f"failed {ended_after:.1f}s after the SIGSTOP")
    events_after_final = trial.subscriber.events_after_final(reply_id)
    return FrozenReply(
        text,
        model,
        ended,
        ended_after,
        after_resume,
        trial.problems,
        events_after_final,
        late_snapshot,
        depths,
    )


async def test_frozen_responders_reply_is_failed_within_a_few_leases(
    frozen: FrozenReply,
) -> None:
    """Its lease runs out and a live responder's sweeper fails it, keeping the stored text."""
    ended = frozen.ended
    assert ended.status == Status.FAILED, ended
    assert ended.error == ABANDONED
    assert (ended.finish_reason, ended.model) == ("error", frozen.model), ended
    assert frozen.ended_after < 4 * LEASE + 2, f"failed only after {frozen.ended_after:.1f}s"
    assert expected_reply(frozen.prompt, TOKENS).startswith(ended.message)


async def test_resumed_responder_leaves_the_failed_reply_alone(frozen: FrozenReply) -> None:
    """SIGCONT: the old responder acknowledges its job without rewriting the reply."""
    assert frozen.after_resume == frozen.ended
    assert frozen.depths.get(CHAT_QUEUE) == (0, 0)
    assert not frozen.events_after_final, frozen.events_after_final


async def test_subscribers_see_the_frozen_reply_fail_with_the_stored_text(
    frozen: FrozenReply,
) -> None:
    """Live and new subscribers see it failed, with exactly the text GET shows."""
    assert not frozen.subscriber_problems, "\n".join(frozen.subscriber_problems)
    assert frozen.late_snapshot is not None
    assert frozen.late_snapshot.status == Status.FAILED, frozen.late_snapshot
    assert frozen.late_snapshot.message == frozen.ended.message
