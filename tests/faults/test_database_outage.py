"""MongoDB going away: the SecantusDB process of the module's stack stopped, then started again.

SecantusDB keeps its data in a storage directory here (not :memory:), so what was stored before
the outage is still there after it, and what was refused during it is provably absent.
"""

import asyncio
import time

import pytest

from shared.schemas import Status
from tests.faults.support import (
    Expect,
    FaultStack,
    ResultBook,
    audit,
    clients,
    new_conversation,
    readiness_is,
    save_tally,
    settle_and_audit,
    stack_fixture,
    watched_post,
)
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
    tally = results.new("MongoDB down when POST /chat arrives")
    started = time.monotonic()
    async with clients(stack) as (apis, mock):
        api = apis[0]
        before_id = new_conversation_id()
        before_text = prompt("before", tokens=5, delay_ms=5)
        before, _ = await api.ask(before_text, before_id)
        refused_id = new_conversation_id()
        try:
            assert await asyncio.to_thread(stack.stop_mongo) is not None
            await readiness_is([api], 503, 15)
            posted = time.monotonic()
            response = await api.http.post(
                "/chat",
                json={"message": prompt("refused"), "conversationId": refused_id},
                timeout=180.0,
            )
            post_seconds = time.monotonic() - posted
            tally.trials += 1
        finally:
            await asyncio.to_thread(stack.start_mongo)
        await readiness_is([api], 200, RECOVERY_TIMEOUT)
        after_id = new_conversation_id()
        after_text = prompt("after", tokens=5, delay_ms=5)
        after, _ = await api.ask(after_text, after_id, timeout=RECOVERY_TIMEOUT)
        problems = await audit(
            api,
            before_id,
            [Expect(before.message_id, texts=(expected_reply(before_text, 5),))],
            tally,
        )
        problems += await audit(
            api,
            after_id,
            [Expect(after.message_id, texts=(expected_reply(after_text, 5),))],
            tally,
            mock=mock,
        )
        refused_status = await api.conversation_status(refused_id)
    tally.notes.append(f"POST /chat answered {response.status_code} in {post_seconds:.1f}s")
    save_tally(results, tally, time.monotonic() - started)
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
    tally = results.new("MongoDB down under a streaming reply")
    started = time.monotonic()
    async with new_conversation(stack) as (api, mock, conversation_id):
        text = prompt("db-outage", tokens=200, delay_ms=30)
        async with watched_post(api, conversation_id, text) as (subscriber, accepted):
            await subscriber.streaming(accepted.message_id, seq=3)
            holder = stack.live_responders()[0]
            renewals_failed = holder.log_path.read_text().count(RENEWAL_FAILED)
            try:
                assert await asyncio.to_thread(stack.stop_mongo) is not None
                await readiness_is([api], 503, 15)
                # Down for longer than two leases: until the responder failed to renew twice.
                await eventually(
                    lambda: (
                        holder.log_path.read_text().count(RENEWAL_FAILED) >= renewals_failed + 2
                    ),
                    30,
                    interval=0.2,
                    what="the responder to fail renewing its lease twice",
                )
            finally:
                await asyncio.to_thread(stack.start_mongo)
            await readiness_is([api], 200, RECOVERY_TIMEOUT)
            problems = await settle_and_audit(
                api,
                conversation_id,
                Expect(
                    accepted.message_id,
                    texts=tuple(expected_reply(text, 200, attempt) for attempt in range(3)),
                ),
                tally,
                [subscriber],
                timeout=RECOVERY_TIMEOUT,
            )
            stored = await api.message(conversation_id, accepted.message_id)
            calls = len(await mock.requests(text))
    tally.notes.append(
        f"ended {stored.status} (attempt {stored.attempt}, {calls} model calls): {stored.error}"
    )
    tally.notes += problems
    save_tally(results, tally, time.monotonic() - started)
    assert stored.status == Status.COMPLETED, stored
    assert not problems, "\n".join(problems)
