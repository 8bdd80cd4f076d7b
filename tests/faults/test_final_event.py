"""A reply's end is announced by its final event, once, even when a broker restart hid its tail.

Issue 9, defect 1: two APIs, one responder, a WebSocket subscriber on each API; a reply of 400
tokens 10 ms apart; once a subscriber has seen `seq >= 5`, RabbitMQ's application is stopped for
2 s and started again. The relays miss the rest of the stream and catch up from MongoDB after
the reconnection. The reply must still end, for every subscriber, with exactly one
`message.completed` as the last event of the reply (a client ends its "typing" indicator on it),
and the text rebuilt must be the stored one. The shared audit checks the same after every fault.
"""

import asyncio
import contextlib
import time

import pytest

from tests.faults.support import (
    FaultStack,
    LiveSubscriber,
    ResultBook,
    clients,
    rabbit_start_app,
    rabbit_stop_app,
    readiness_is,
    save_tally,
    settle_and_audit,
    stack_fixture,
    whole_reply,
)
from tests.helpers import new_conversation_id, prompt

pytestmark = pytest.mark.faults

TOKENS = 400
DELAY_MS = 10
STOP_AT_SEQ = 5
OUTAGE_SECONDS = 2.0
"""How long the broker stays stopped: the fault itself, as the issue's repro has it."""
RECOVERY_TIMEOUT = 90.0

stack = stack_fixture(
    "final-event",
    "Two APIs and one responder, as in the issue's repro.",
    responders=1,
    apis=2,
)


async def test_the_end_of_a_reply_is_announced_once_after_a_broker_restart(
    stack: FaultStack, results: ResultBook
) -> None:
    tally = results.new("RabbitMQ stop_app for 2 s at seq 5 of a 400-token reply: its end event")
    started = time.monotonic()
    async with clients(stack) as (apis, mock), contextlib.AsyncExitStack() as exits:
        conversation_id = new_conversation_id()
        text = prompt("final-event", tokens=TOKENS, delay_ms=DELAY_MS)
        subscribers = [
            await exits.enter_async_context(LiveSubscriber.open(api.ws_url, conversation_id))
            for api in apis
        ]
        accepted = await apis[0].post_chat(text, conversation_id)
        await subscribers[0].streaming(accepted.message_id, seq=STOP_AT_SEQ)
        await asyncio.to_thread(rabbit_stop_app)
        try:
            await asyncio.sleep(OUTAGE_SECONDS)
        finally:
            await asyncio.to_thread(rabbit_start_app)
        await readiness_is(apis, 200, RECOVERY_TIMEOUT)
        problems = await settle_and_audit(
            apis[0],
            conversation_id,
            whole_reply(accepted.message_id, text, TOKENS),
            tally,
            subscribers,
            mock,
            timeout=RECOVERY_TIMEOUT,
        )
    tally.notes += problems
    save_tally(results, tally, time.monotonic() - started)
    assert not problems, "\n".join(problems)
