"""One trial of a fault: watch a conversation, let the test do its harm, then settle and audit.

A fault test reads as the fault and its checks:

    async with results.fault("SIGTERM mid-reply") as tally:
        async with fault_trial(stack, tally) as trial:
            accepted = await trial.post(text)
            await trial.subscriber.streaming(accepted.message_id)
            ...the fault...
            trial.expect(whole_reply(accepted.message_id, text, 100))
    assert not trial.problems
"""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from shared.schemas import ChatAccepted
from tests.faults.audit import Expect, Tally, audit, settle
from tests.faults.clients import MockProbe, clients
from tests.faults.stack import FaultStack
from tests.faults.subscribers import LiveSubscriber
from tests.helpers import ApiClient, new_conversation_id

Check = Callable[[], Awaitable[str | None]]
"""A test's own check, made once the trial's replies have settled: the problem found, or None."""


@dataclass
class Trial:
    """The clients, the conversation and its subscribers during a trial; its findings after."""

    apis: list[ApiClient]
    mock: MockProbe
    conversation_id: str
    exits: contextlib.AsyncExitStack
    subscribers: list[LiveSubscriber] = field(default_factory=list)
    expects: list[Expect] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    """What went wrong: what the test adds in its block, then what the settle, the test's
    `once_settled` checks and the audit found once the block has ended."""
    disconnected: list[str] = field(default_factory=list)
    """The subscribers that had lost their connection when the replies were audited."""

    @property
    def api(self) -> ApiClient:
        return self.apis[0]

    @property
    def subscriber(self) -> LiveSubscriber:
        return self.subscribers[0]

    async def post(self, text: str, api: ApiClient | None = None) -> ChatAccepted:
        return await (api or self.api).post_chat(text, self.conversation_id)

    async def subscribe(self, api: ApiClient | None = None) -> LiveSubscriber:
        """Another subscriber, to the end of the trial, audited like the first ones."""
        url = (api or self.api).ws_url
        subscriber = await self.exits.enter_async_context(
            LiveSubscriber.open(url, self.conversation_id)
        )
        self.subscribers.append(subscriber)
        return subscriber

    def expect(self, *expects: Expect) -> None:
        """Replies to settle and audit when the block ends."""
        self.expects += expects

    def once_settled(self, check: Check) -> None:
        """A check to make when the block ends, once the replies have settled, before the audit
        (which counts the model's calls: what the check waits for has happened by then)."""
        self.checks.append(check)


@contextlib.asynccontextmanager
async def fault_trial(
    stack: FaultStack,
    tally: Tally,
    conversation_id: str | None = None,
    watchers: int = 1,
    timeout: float = 30.0,
    trials: int = 1,
) -> AsyncIterator[Trial]:
    """Subscribe on the first `watchers` APIs, yield, then settle, audit and count the trial
    (as `trials` of them: a block that sends three duplicates tries the fault three times).

    Problems are collected, not raised, in `trial.problems` (and the tally's notes), so the
    counts are complete whatever went wrong; the test asserts on them.
    """
    async with clients(stack) as (apis, mock), contextlib.AsyncExitStack() as exits:
        trial = Trial(apis, mock, conversation_id or new_conversation_id(), exits)
        for api in apis[:watchers]:
            await trial.subscribe(api)
        yield trial
        for expect in trial.expects:
            trial.problems += await settle(
                trial.api, trial.conversation_id, expect.reply_id, trial.subscribers, timeout
            )
        for check in trial.checks:
            if (problem := await check()) is not None:
                trial.problems.append(problem)
        tally.trials += trials
        trial.problems += await audit(
            trial.api, trial.conversation_id, trial.expects, tally, trial.subscribers, mock
        )
        trial.disconnected = [
            f"subscriber of {subscriber.conversation_id} disconnected with code "
            f"{subscriber.close_code}"
            for subscriber in trial.subscribers
            if not subscriber.connected
        ]
        tally.notes += trial.problems
