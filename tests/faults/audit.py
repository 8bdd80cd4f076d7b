"""What a user would check after a fault, counted per fault for the report.

`settle` waits for a reply to end, `audit` checks it (lost, stuck, duplicated, mixed, and every
subscriber's rebuilt copy), and a `Tally` per fault collects the counts that `ResultBook`
writes to a JSON file (FAULT_RESULTS, default /tmp/fault-results.json).
"""

import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.events import FINISHED_EVENT
from shared.schemas import FINISHED, UNFINISHED, Message, Status
from tests.faults.clients import MockProbe
from tests.faults.subscribers import LiveSubscriber
from tests.helpers import ApiClient, expected_reply

RESULTS_PATH = Path(os.environ.get("FAULT_RESULTS", "/tmp/fault-results.json"))
SUBSCRIBER_LAG = 10.0
"""How long after GET shows a reply finished its subscribers may still be waiting for it."""


@dataclass
class Tally:
    """What one fault did to the replies: the numbers of the report's table."""

    fault: str
    trials: int = 0
    replies: int = 0
    lost: int = 0
    stuck: int = 0
    duplicates: int = 0
    mixed: int = 0
    subscriber_mismatches: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


class ResultBook:
    """Collects tallies and rewrites the JSON file after each, so a crash keeps the counts."""

    def __init__(self, path: Path = RESULTS_PATH) -> None:
        self.path = path
        self.tallies: list[Tally] = []
        self.started = time.monotonic()

    @contextlib.asynccontextmanager
    async def fault(self, name: str) -> AsyncIterator[Tally]:
        """The tally of one fault, timed over the block and saved at its end, pass or fail."""
        tally = Tally(name)
        self.tallies.append(tally)
        started = time.monotonic()
        try:
            yield tally
        finally:
            tally.seconds = round(time.monotonic() - started, 1)
            self.save()

    def save(self) -> None:
        data = {
            "suite_seconds": round(time.monotonic() - self.started, 1),
            "faults": [asdict(tally) for tally in self.tallies],
        }
        self.path.write_text(json.dumps(data, indent=2))


@dataclass
class Expect:
    """What one reply may end as: statuses allowed, and the texts allowed (None: any).

    A failed reply may hold a prefix of an allowed text (the text received so far).
    """

    reply_id: str
    statuses: tuple[Status, ...] = (Status.COMPLETED,)
    texts: tuple[str, ...] | None = None
    model_calls: int | None = None
    prompt: str | None = None


def whole_reply(
    reply_id: str, text: str, tokens: int, attempt: int = 0, model_calls: int = 1
) -> Expect:
    """The reply completed with one attempt's whole text, the model asked `model_calls` times."""
    return Expect(
        reply_id,
        texts=(expected_reply(text, tokens, attempt),),
        model_calls=model_calls,
        prompt=text,
    )


def _text_allowed(reply: Message, texts: tuple[str, ...]) -> bool:
    """A completed reply is one attempt's whole text; a failed one keeps a prefix of it."""
    if reply.status == Status.FAILED:
        return any(text.startswith(reply.message) for text in texts)
    return reply.message in texts


async def settle(
    api: ApiClient,
    conversation_id: str,
    reply_id: str,
    subscribers: Sequence[LiveSubscriber] = (),
    timeout: float = 30.0,
) -> list[str]:
    """Wait, with one deadline, for the stored reply and then every subscriber to finish.

    Returns what did not happen instead of raising, so the audit still counts the rest.
    Subscribers get SUBSCRIBER_LAG seconds after GET shows the reply finished.
    """
    problems = []
    try:
        await api.finished(conversation_id, reply_id, timeout)
    except AssertionError:
        stored = await api.message(conversation_id, reply_id)
        problems.append(f"reply {reply_id} still {stored.status} after {timeout:.0f}s")
    deadline = time.monotonic() + SUBSCRIBER_LAG
    for subscriber in subscribers:
        try:
            await subscriber.finished(reply_id, max(deadline - time.monotonic(), 0.5))
        except AssertionError as error:
            stored = await api.message(conversation_id, reply_id)
            problems.append(
                f"{error}; the subscriber has {subscriber.get(reply_id)!r}; GET has {stored!r}; "
                f"its last events: {subscriber.timeline()[-6:]}"
            )
    return problems


async def audit(
    api: ApiClient,
    conversation_id: str,
    expects: Sequence[Expect],
    tally: Tally,
    subscribers: Sequence[LiveSubscriber] = (),
    mock: MockProbe | None = None,
) -> list[str]:
    """Count what a user would check, add it to `tally`, and return the problems found.

    One final reply per user message (no duplicate), none left created/streaming (stuck),
    none missing or ending otherwise than allowed (lost), the final text one attempt's text
    exactly (not a mix), every subscriber's rebuilt text equal to the stored one, and its end
    announced to every subscriber once, by its final event (`end_announcement_problem`).
    """
    problems: list[str] = []
    stored = (await api.conversation(conversation_id)).messages
    users = [message for message in stored if message.sender == "user"]
    replies = {message.id: message for message in stored if message.sender == "assistant"}
    tally.replies += len(expects)
    if len(replies) != len(users):
        extra = max(0, len(replies) - len(users))
        tally.duplicates += extra
        problems.append(f"{len(users)} user messages but {len(replies)} replies")
    for expect in expects:
        reply = replies.get(expect.reply_id)
        if reply is None:
            tally.lost += 1
            problems.append(f"reply {expect.reply_id} is not stored")
            continue
        if reply.status in UNFINISHED:
            tally.stuck += 1
            problems.append(f"reply {reply.id} stuck {reply.status}: {reply!r}")
            continue
        if reply.status not in expect.statuses:
            tally.lost += 1
            problems.append(f"reply {reply.id} ended {reply.status} ({reply.error})")
        if reply.status == Status.FAILED and not reply.error:
            problems.append(f"reply {reply.id} failed without an error")
        if expect.texts is not None and not _text_allowed(reply, expect.texts):
            tally.mixed += 1
            problems.append(
                f"reply {reply.id} ({reply.status}) text is not one attempt's text"
                f"{' (or a prefix of it)' if reply.status == Status.FAILED else ''}: "
                f"{reply.message!r} (attempt {reply.attempt})"
            )
        if mock is not None and expect.prompt is not None and expect.model_calls is not None:
            calls = len(await mock.requests(expect.prompt))
            if calls > expect.model_calls:
                tally.duplicates += calls - expect.model_calls
            if calls != expect.model_calls:
                problems.append(
                    f"the model was asked {calls} times for {reply.id}, "
                    f"expected {expect.model_calls}"
                )
        for subscriber in subscribers:
            if subscriber.conversation_id != conversation_id:
                continue
            seen = subscriber.get(reply.id)
            if subscriber.error is not None:
                tally.subscriber_mismatches += 1
                problems.append(f"subscriber broke the contract: {subscriber.error}")
            elif seen is None or seen.status != reply.status or seen.message != reply.message:
                tally.subscriber_mismatches += 1
                problems.append(f"subscriber rebuilt {seen!r} but GET has {reply!r} for {reply.id}")
            elif ending := end_announcement_problem(subscriber, reply):
                tally.subscriber_mismatches += 1
                problems.append(ending)
    return problems


def end_announcement_problem(subscriber: LiveSubscriber, reply: Message) -> str | None:
    """What is wrong with how the subscriber learnt that `reply` finished, if anything.

    A client ends its "typing" indicator on `message.completed` / `message.failed`: a reply
    that finished after the snapshot is announced by exactly one of them, and nothing about the
    reply comes after it. A reply already finished in the snapshot gets no event at all.
    """
    if reply.status in UNFINISHED:
        return None
    events = subscriber.events_of(reply.id)
    kinds = [event["type"] for event in events]
    finals = [kind for kind in kinds if kind in FINISHED_EVENT.values()]
    in_snapshot = next((m for m in subscriber.snapshot or [] if m.id == reply.id), None)
    if in_snapshot is not None and in_snapshot.status in FINISHED:
        if events:
            return f"{reply.id} was finished in the snapshot, then came {kinds}"
        return None
    if len(finals) != 1 or kinds[-1] != finals[0]:
        return (
            f"{reply.id} ended {reply.status} but its subscriber of {subscriber.conversation_id} "
            f"got {len(finals)} final events, and its last events were {kinds[-4:]}"
        )
    return None
