"""RabbitMQ going away: restarted under streaming replies, and down when a message is posted.

Both services must reconnect by themselves; WebSocket subscribers stay connected through it
and still end with exactly the stored text; the outbox publishes what was posted meanwhile.
Every test restarts the broker in `finally`, and the suite's safety net checks again.
"""

import contextlib
import time
from dataclasses import dataclass, field

import pytest

from devstack.processes import Process
from shared.schemas import ChatAccepted, Status
from tests.faults.audit import Expect, ResultBook, whole_reply
from tests.faults.broker_control import broker_down
from tests.faults.clients import clients, readiness_is
from tests.faults.stack import FaultStack, stack_fixture
from tests.faults.trial import Trial, fault_trial
from tests.helpers import ApiClient, eventually, expected_reply, prompt
from tests.metrics import scrape, value

pytestmark = pytest.mark.faults

REPLIES = 4
TOKENS = 500
DELAY_MS = 30
RECOVERY_TIMEOUT = 90.0
RECONNECT_FAILED = "Reconnecting after"

stack = stack_fixture(
    "broker",
    "Two APIs and two responders, a short lease: an outage outlasts it.",
    responders=2,
    apis=2,
    REPLY_LEASE_SECONDS="3",
)


async def stored_progress(api: ApiClient, turn: ChatAccepted) -> int:
    """The reply's stored seq, or one more than any seq once it is completed."""
    reply = await api.message(turn.conversation_id, turn.message_id)
    return TOKENS + 1 if reply.status == Status.COMPLETED else reply.seq


async def outbox_is(api: ApiClient, replies: int) -> bool:
    """Whether the API's chat_outbox_replies gauge says `replies` wait for their job."""
    return value(await scrape(f"{api.base_url}/metrics"), "chat_outbox_replies") == replies


def reconnect_failures(process: Process) -> int:
    """How many times the process logged a failed attempt to reconnect to the broker."""
    return process.log_path.read_text(errors="replace").count(RECONNECT_FAILED)


async def growth(api: ApiClient, turns: list[ChatAccepted]) -> dict[str, bool]:
    """Whether each reply grows in MongoDB within 5 s (the broker being away meanwhile)."""
    seqs = {turn.message_id: await stored_progress(api, turn) for turn in turns}
    grown = dict.fromkeys(seqs, False)

    async def all_grown() -> bool:
        for turn in turns:
            grown[turn.message_id] |= await stored_progress(api, turn) > seqs[turn.message_id]
        return all(grown.values())

    with contextlib.suppress(AssertionError):
        await eventually(all_grown, 5, 0.2, "the replies to grow")
    return grown


@dataclass
class Restart:
    """What the broker restart left behind, for the tests that judge it."""

    reply_problems: list[str] = field(default_factory=list)
    disconnected: list[str] = field(default_factory=list)
    after_problems: list[str] = field(default_factory=list)
    model_calls: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    grew_without_broker: dict[str, bool] = field(default_factory=dict)
    endings: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
async def restart(stack: FaultStack, results: ResultBook) -> Restart:
    """Stop the broker under streaming replies, until they grew without it; start it again."""
    outcome = Restart()
    async with (
        results.fault(f"RabbitMQ stop_app/start_app under {REPLIES} streaming replies") as tally,
        clients(stack) as (apis, mock),
    ):
        api = apis[0]
        async with contextlib.AsyncExitStack() as exits:
            trials: list[tuple[Trial, str, ChatAccepted]] = []
            for index in range(REPLIES):
                trial = await exits.enter_async_context(
                    fault_trial(stack, tally, watchers=2, timeout=RECOVERY_TIMEOUT)
                )
                text = prompt(f"outage-{index}", tokens=TOKENS, delay_ms=DELAY_MS)
                trials.append((trial, text, await trial.post(text, trial.apis[index % 2])))
            for trial, _, turn in trials:
                await trial.subscriber.streaming(turn.message_id, seq=3)
            processes = [process for process, _ in stack.apis] + stack.live_responders()
            noticed = {process.name: reconnect_failures(process) for process in processes}
            stopped_at = time.monotonic()
            async with broker_down():
                await readiness_is(apis, 503, 15)
                # Keep the broker away until every service has noticed: each one has already
                # failed to reconnect at least once.
                await eventually(
                    lambda: all(reconnect_failures(p) > noticed[p.name] for p in processes),
                    30,
                    interval=0.2,
                    what="every service to fail reconnecting to the broker",
                )
                outcome.grew_without_broker = await growth(api, [turn for _, _, turn in trials])
            outage = time.monotonic() - stopped_at
            await readiness_is(apis, 200, RECOVERY_TIMEOUT)
            for trial, text, turn in trials:
                trial.expect(
                    Expect(
                        turn.message_id,
                        statuses=(Status.COMPLETED, Status.FAILED),
                        texts=tuple(expected_reply(text, TOKENS, attempt) for attempt in range(3)),
                    )
                )
        for trial, text, turn in trials:
            outcome.reply_problems += trial.problems
            outcome.disconnected += trial.disconnected
            asked = [(r["model"], r["attempt"]) for r in await mock.requests(text)]
            outcome.model_calls[turn.message_id] = asked
            final = await api.message(trial.conversation_id, turn.message_id)
            outcome.endings[turn.message_id] = (
                f"{final.status} (attempt {final.attempt}, {len(asked)} model calls) {final.error}"
            )
        tally.notes += outcome.disconnected
        # The services really recovered: a new message in each conversation is answered, and
        # seen live by new subscribers on both APIs.
        for trial, _, _ in trials:
            async with fault_trial(stack, tally, trial.conversation_id, watchers=2) as after:
                text = prompt("after-outage", tokens=5, delay_ms=5)
                accepted = await after.post(text)
                after.expect(Expect(accepted.message_id, texts=(expected_reply(text, 5),)))
            outcome.after_problems += after.problems
        tally.notes.append(f"broker down for about {outage:.1f}s (stop_app to start_app returning)")
        tally.notes.append(
            f"replies grew in MongoDB while it was down: {outcome.grew_without_broker}"
        )
        tally.notes.append(f"replies ended: {outcome.endings}")
    return outcome


async def test_subscribers_stay_connected_through_the_broker_restart(restart: Restart) -> None:
    """A broker outage is the server's business: WebSocket clients are not disconnected."""
    assert not restart.disconnected, "\n".join(restart.disconnected)


async def test_replies_in_flight_end_once_with_the_stored_text_everywhere(
    restart: Restart,
) -> None:
    """Each reply ends completed (or failed cleanly), once, with one attempt's exact text."""
    assert not restart.reply_problems, "\n".join(restart.reply_problems)


async def test_services_answer_new_messages_after_the_broker_restart(restart: Restart) -> None:
    """Both services reconnected by themselves: new messages are answered and seen live."""
    assert not restart.after_problems, "\n".join(restart.after_problems)


async def test_replies_in_flight_go_on_through_a_broker_blip(restart: Restart) -> None:
    """The responder writing a reply keeps writing it without the broker (Job's intent)."""
    assert all(restart.grew_without_broker.values()), restart.grew_without_broker
    done_once = {
        reply: ending
        for reply, ending in restart.endings.items()
        if not ending.startswith("completed (attempt 1, 1 model calls)")
    }
    assert not done_once, f"replies not completed by their first attempt: {done_once}"


async def test_post_while_the_broker_is_down_is_stored_and_answered_later(
    stack: FaultStack, results: ResultBook
) -> None:
    """202 at once, both messages stored, and the outbox sends the job once the broker is back."""
    async with (
        results.fault("RabbitMQ down when POST /chat arrives") as tally,
        fault_trial(stack, tally, timeout=RECOVERY_TIMEOUT) as trial,
    ):
        api = trial.api
        text = prompt("outbox", tokens=20, delay_ms=10)
        async with broker_down():
            await readiness_is([api], 503, 15)
            posted = time.monotonic()
            response = await api.http.post(
                "/chat", json={"message": text, "conversationId": trial.conversation_id}
            )
            post_seconds = time.monotonic() - posted
            assert response.status_code == 202, response.text
            reply_id = response.json()["messageId"]
            stored = await api.conversation(trial.conversation_id)
            assert [(m.sender, m.status) for m in stored.messages] == [
                ("user", Status.COMPLETED),
                ("assistant", Status.CREATED),
            ], stored
            assert stored.messages[1].id == reply_id
            await trial.subscribe()
            await eventually(
                lambda: outbox_is(api, 1), RECOVERY_TIMEOUT, 0.5, "the outbox gauge to say 1"
            )
        await readiness_is([api], 200, RECOVERY_TIMEOUT)
        await eventually(
            lambda: outbox_is(api, 0), RECOVERY_TIMEOUT, 0.5, "the outbox gauge back to 0"
        )
        trial.expect(whole_reply(reply_id, text, 20))
        tally.notes.append(f"POST /chat answered in {post_seconds:.1f}s with the broker down")
    problems = trial.problems
    assert not problems, "\n".join(problems)
    assert post_seconds < 5, f"POST /chat took {post_seconds:.1f}s while the broker was down"
