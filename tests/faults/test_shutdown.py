"""Graceful shutdown: SIGTERM to a responder mid-reply, and to an API with WebSocket clients.

A responder with enough grace finishes its replies and exits 0; one without hands them back at
once, and another responder completes them. An API closes its WebSockets with 1012 (service
restart), and a client that reconnects elsewhere carries on from a fresh snapshot.
"""

import asyncio
import signal
import time

import pytest

from devstack.processes import Process
from shared.schemas import Status
from tests.faults.audit import ResultBook, whole_reply
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.subscribers import LiveSubscriber
from tests.faults.trial import fault_trial
from tests.helpers import eventually, prompt

pytestmark = pytest.mark.faults

LEASE = 2.0
DELAY_MS = 30
SERVICE_RESTART = 1012

stack = stack_fixture(
    "shutdown",
    "No responder at first: each test starts the ones it needs, with their grace.",
    responders=0,
    apis=1,
    REPLY_LEASE_SECONDS=str(LEASE),
)


async def only_responders(stack: FaultStack, *graces: float) -> list[Process]:
    """Stop whatever responders run, then start one per grace period given."""
    for process in stack.live_responders():
        await asyncio.to_thread(process.stop)
    return [
        await asyncio.to_thread(stack.start_responder, SHUTDOWN_GRACE_SECONDS=str(grace))
        for grace in graces
    ]


async def sigterm(process: Process, timeout: float) -> tuple[int | None, float]:
    """SIGTERM and wait for the exit: (exit code, seconds it took)."""
    started = time.monotonic()
    code = await asyncio.to_thread(process.stop, timeout)
    return code, time.monotonic() - started


async def test_sigterm_with_enough_grace_finishes_the_reply_then_exits_0(
    stack: FaultStack, results: ResultBook
) -> None:
    """A deploy must not cut replies short: with enough grace the reply finishes first."""
    (responder,) = await only_responders(stack, 30)
    async with (
        results.fault("SIGTERM to a responder mid-reply, grace 30 s") as tally,
        fault_trial(stack, tally) as trial,
    ):
        text = prompt("drain", tokens=100, delay_ms=DELAY_MS)
        accepted = await trial.post(text)
        await trial.subscriber.streaming(accepted.message_id, seq=5)
        code, took = await sigterm(responder, 60)
        at_exit = await trial.api.message(trial.conversation_id, accepted.message_id)
        trial.expect(whole_reply(accepted.message_id, text, 100))
        tally.notes.append(f"exit code {code} after {took:.1f}s")
    assert code == 0, f"the responder exited with {code}"
    assert at_exit.status == Status.COMPLETED, f"exited before finishing the reply: {at_exit!r}"
    assert at_exit.attempt == 1, "the reply was restarted"
    assert not trial.problems, "\n".join(trial.problems)


async def test_sigterm_with_short_grace_hands_the_reply_back_at_once(
    stack: FaultStack, results: ResultBook
) -> None:
    """Grace 1 s, a long reply: exit 0 quickly, another responder restarts it without a lease."""
    (short,) = await only_responders(stack, 1)
    async with (
        results.fault("SIGTERM to a responder mid-reply, grace 1 s") as tally,
        fault_trial(stack, tally) as trial,
    ):
        text = prompt("handback", tokens=300, delay_ms=DELAY_MS)
        reply_id = (await trial.post(text)).message_id
        subscriber = trial.subscriber
        await subscriber.streaming(reply_id, seq=5)
        await asyncio.to_thread(stack.start_responder, SHUTDOWN_GRACE_SECONDS="30")
        assert not subscriber.is_finished(reply_id), "the reply ended before the SIGTERM"
        first_attempt = subscriber.attempt(reply_id)
        signalled = time.monotonic()
        code, took = await sigterm(short, 30)
        await subscriber.wait(
            lambda s: s.attempt(reply_id) > first_attempt,
            30,
            "another responder to restart the reply",
        )
        taken_over = time.monotonic() - signalled
        trial.expect(whole_reply(reply_id, text, 300, attempt=1, model_calls=2))
        tally.notes.append(
            f"exit code {code} after {took:.1f}s; "
            f"restarted elsewhere {taken_over:.1f}s after SIGTERM"
        )
        asked = await trial.mock.models_asked(text)
    assert code == 0, f"the responder exited with {code}"
    assert took < 1 + 4, f"took {took:.1f}s to exit with a 1 s grace"
    assert len(asked) == 2 and asked[0] != asked[1], asked
    assert taken_over < 1 + LEASE, f"the reply waited {taken_over:.1f}s: not handed back"
    assert not trial.problems, "\n".join(trial.problems)


async def test_sigterm_to_an_api_closes_its_websockets_with_1012(
    stack: FaultStack, results: ResultBook
) -> None:
    """Clients learn the server is restarting, reconnect elsewhere and miss nothing."""
    await only_responders(stack, 5)
    extra, extra_url = await asyncio.to_thread(stack.start_api)
    async with (
        results.fault("SIGTERM to an API with WebSocket clients") as tally,
        fault_trial(stack, tally, watchers=0) as trial,
    ):
        text = prompt("api-restart", tokens=150, delay_ms=DELAY_MS)
        ws_extra = extra_url.replace("http://", "ws://", 1)
        async with LiveSubscriber.open(ws_extra, trial.conversation_id) as leaving:
            accepted = await trial.post(text)
            await leaving.streaming(accepted.message_id, seq=5)
            code, took = await sigterm(extra, 20)
            await eventually(lambda: not leaving.connected, 10, what="the WebSocket to close")
            leaving.check()
        await trial.subscribe()
        trial.expect(whole_reply(accepted.message_id, text, 150))
        tally.notes.append(
            f"API exit code {code} after {took:.1f}s; close code {leaving.close_code}"
        )
    assert leaving.close_code == SERVICE_RESTART, f"closed with {leaving.close_code}"
    # uvicorn re-raises the signal after its graceful shutdown: -SIGTERM is a clean exit too.
    assert code in (0, -signal.SIGTERM), f"the API exited with {code}"
    assert took < 10, f"the API took {took:.1f}s to shut down"
    assert not trial.problems, "\n".join(trial.problems)
