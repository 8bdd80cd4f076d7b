"""MongoDB going away: the SecantusDB process of the module's stack stopped, then started again.

SecantusDB keeps its data in a storage directory here (not :memory:), so what was stored before
the outage is still there after it, and what was refused during it is provably absent.
"""

import time

import pytest

from shared.schemas import Status
from tests.faults.audit import Expect, ResultBook
from tests.faults.clients import clients, readiness_is
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.trial import fault_trial
from tests.helpers import eventually, expected_reply, new_conversation_id, prompt

pytestmark = pytest.mark.faults

DB_TIMEOUT = 3.0
RECOVERY_TIMEOUT = 60.0
RENEWAL_FAILED = "renewing leases failed"

stack = stack_fixture(
    "mongo",
    "STARTUP_TIMEOUT_SECONDS is also the driver's server-selection timeout: keep it short.",
    responders=1,
    REPLY_LEASE_SECONDS="2",
    STARTUP_TIMEOUT_SECONDS=str(DB_TIMEOUT),
)


async def test_post_while_mongodb_is_down_is_refused_and_nothing_is_stored(
    stack: FaultStack, results: ResultBook
) -> None:
    """503 with a JSON reason, nothing half-stored, and the services recover by themselves."""
    async with results.fault("MongoDB down when POST /chat arrives") as tally:
        async with fault_trial(stack, tally, watchers=0) as before:
            api = before.api
            before_text = prompt("before", tokens=5, delay_ms=5)
            accepted = await before.post(before_text)
            await api.finished(before.conversation_id, accepted.message_id)
            before.expect(Expect(accepted.message_id, texts=(expected_reply(before_text, 5),)))
            refused_id = new_conversation_id()
            async with stack.mongo_down():
                await readiness_is([api], 503, 15)
                posted = time.monotonic()
                response = await api.http.post(
                    "/chat",
                    json={"message": prompt("refused"), "conversationId": refused_id},
                    timeout=180.0,
                )
                post_seconds = time.monotonic() - posted
            await readiness_is([api], 200, RECOVERY_TIMEOUT)
            refused_status = await api.conversation_status(refused_id)
        async with fault_trial(stack, tally, watchers=0, timeout=RECOVERY_TIMEOUT) as after:
            after_text = prompt("after", tokens=5, delay_ms=5)
            accepted = await after.post(after_text)
            after.expect(Expect(accepted.message_id, texts=(expected_reply(after_text, 5),)))
        tally.notes.append(f"POST /chat answered {response.status_code} in {post_seconds:.1f}s")
    problems = before.problems + after.problems
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "database" in response.json()["detail"]
    assert post_seconds < DB_TIMEOUT + 7, f"POST /chat took {post_seconds:.1f}s to say 503"
    assert refused_status == 404, "the refused message's conversation was stored"
    assert not problems, "\n".join(problems)


async def test_reply_in_flight_survives_a_mongodb_outage(
    stack: FaultStack, results: ResultBook
) -> None:
    """The responder keeps streaming, retries its writes, and completes the reply afterwards.

    The outage lasts longer than two leases, so the sweepers could mistake the reply for an
    abandoned one when MongoDB returns; its live responder must renew the lease first.
    """
    async with results.fault("MongoDB down under a streaming reply") as tally:
        async with fault_trial(stack, tally, timeout=RECOVERY_TIMEOUT) as trial:
            text = prompt("db-outage", tokens=200, delay_ms=30)
            reply_id = (await trial.post(text)).message_id
            await trial.subscriber.streaming(reply_id, seq=3)
            holder = stack.live_responders()[0]
            renewals_failed = holder.log_path.read_text().count(RENEWAL_FAILED)
            async with stack.mongo_down():
                await readiness_is([trial.api], 503, 15)
                # Down for longer than two leases: until the responder failed to renew twice.
                await eventually(
                    lambda: (
                        holder.log_path.read_text().count(RENEWAL_FAILED) >= renewals_failed + 2
                    ),
                    30,
                    interval=0.2,
                    what="the responder to fail renewing its lease twice",
                )
            await readiness_is([trial.api], 200, RECOVERY_TIMEOUT)
            trial.expect(
                Expect(
                    reply_id,
                    texts=tuple(expected_reply(text, 200, attempt) for attempt in range(3)),
                )
            )
        async with clients(stack) as (apis, mock):
            stored = await apis[0].message(trial.conversation_id, reply_id)
            calls = len(await mock.requests(text))
        tally.notes.append(
            f"ended {stored.status} (attempt {stored.attempt}, {calls} model calls): {stored.error}"
        )
    assert stored.status == Status.COMPLETED, stored
    assert not trial.problems, "\n".join(trial.problems)
