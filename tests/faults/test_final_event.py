"""A reply's end is announced by its final event, once, even when a broker restart hid its tail.

Issue 9, defect 1: two APIs, one responder, a WebSocket subscriber on each API; a reply of 400
tokens 10 ms apart; once a subscriber has seen `seq >= 5`, RabbitMQ's application is stopped for
2 s and started again. The relays miss the rest of the stream and catch up from MongoDB after
the reconnection. The reply must still end, for every subscriber, with exactly one
`message.completed` as the last event of the reply (a client ends its "typing" indicator on it),
and the text rebuilt must be the stored one. The shared audit checks the same after every fault.
"""

import asyncio

import pytest

from tests.faults.audit import ResultBook, whole_reply
from tests.faults.broker_control import broker_down
from tests.faults.clients import readiness_is
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.trial import fault_trial
from tests.helpers import prompt

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
    async with (
        results.fault(
            "RabbitMQ stop_app for 2 s at seq 5 of a 400-token reply: its end event"
        ) as tally,
        fault_trial(stack, tally, watchers=2, timeout=RECOVERY_TIMEOUT) as trial,
    ):
        text = prompt("final-event", tokens=TOKENS, delay_ms=DELAY_MS)
        accepted = await trial.post(text)
        await trial.subscriber.streaming(accepted.message_id, seq=STOP_AT_SEQ)
        async with broker_down():
            await asyncio.sleep(OUTAGE_SECONDS)
        await readiness_is(trial.apis, 200, RECOVERY_TIMEOUT)
        trial.expect(whole_reply(accepted.message_id, text, TOKENS))
    assert not trial.problems, "\n".join(trial.problems)
