"""From what the clients saw and what the mock says it sent, to the numbers of one run."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.client import Conversation, Load
from bench.metrics import Alignment, Summary, align_tokens, lags_ms, summarize
from bench.probes import AmqpCounts, CommandTime, Usage, Writes
from shared.events import FINISHED_EVENT

DELTA = "message.delta"

Emission = dict[str, Any]
"""A `/_mock/emissions` record: key, attempt, tokens, emitted (epoch seconds per token),
reasoning and reasoning_emitted (the same for the reasoning streamed before the text)."""


@dataclass(slots=True)
class RebuiltReply:
    """One conversation's assistant reply, rebuilt from its frames and checked."""

    lags_ms: list[float]
    emitted: list[float]
    """When the mock sent each token whose lag is in `lags_ms`."""
    sent: int
    delivered: int
    lost: int
    duplicated: int
    seq_errors: int
    ws_bytes: int
    ws_frames: int
    deltas: int
    post_ms: float | None
    model_start_ms: float | None
    first_token_ms: float | None
    completion_ms: float | None
    first_post: float | None
    last_frame: float | None
    matches: bool
    attempts: int
    error: str | None


@dataclass(slots=True)
class RunResult:
    conversations: int
    tokens: int
    delay_ms: float
    ramp_ms: float
    elapsed_s: float
    lag_ms: Summary
    steady_lag_ms: Summary
    """Lag of the tokens sent after the last POST was answered: streaming without start-ups."""
    post_ms: Summary
    model_start_ms: Summary
    """POST sent to the model request reaching the mock: the responder's start-up per reply."""
    first_token_ms: Summary
    completion_ms: Summary
    tokens_sent: int
    tokens_delivered: int
    tokens_per_second: float
    lost: int
    duplicated: int
    seq_errors: int
    mismatched_replies: int
    failed_conversations: int
    retried_replies: int
    ws_bytes_per_reply: float
    ws_frames_per_reply: float
    deltas_per_reply: float
    amqp_messages: int | None
    amqp_messages_per_token: float | None
    amqp_bytes: int | None
    amqp_events: dict[str, int]
    mongo_write_commands: int | None
    mongo_documents_written: int | None
    mongo_writes_per_token: float | None
    usage: dict[str, Usage]
    errors: list[str] = field(default_factory=list)
    phase: str = "run"
    """`run` for the planned loads, `search` for the probes of --find-max."""
    profiles: dict[str, str] = field(default_factory=dict)
    """py-spy raw profiles of this run by process name, with --profile."""
    database_commands: list[CommandTime] = field(default_factory=list)
    """The database's time per kind of command over this run, with --db-profile."""


def rebuild(conversation: Conversation) -> tuple[list[tuple[float, str]], str | None, int, int]:
    """The assistant reply's pieces (receive time, text), its final text, deltas, seq errors.

    The final text is that of `message.completed` or `message.failed` (None: neither came).

    Follows the contract: a `message.created`/`message.updated` replaces the client's copy, each
    delta must continue from the copy's `seq` by exactly one.
    """
    pieces: list[tuple[float, str]] = []
    text, seq, deltas, errors = "", 0, 0, 0
    completed: str | None = None
    for frame in conversation.frames:
        event = frame.event
        kind = event["type"]
        if kind == "message.delta":
            deltas += 1
            if event["seq"] != seq + 1:
                errors += 1
            seq = event["seq"]
            pieces.append((frame.received_at, event["delta"]))
            text += event["delta"]
            continue
        message = event.get("message")
        if not isinstance(message, dict) or message.get("from") != "assistant":
            continue
        if kind in FINISHED_EVENT.values():
            completed = message["message"]
        elif message["message"] != text or message["seq"] != seq:
            # A replacement (a retry from seq 0, or a repair): the client's copy starts over.
            pieces = [(frame.received_at, message["message"])] if message["message"] else []
            text, seq = message["message"], message["seq"]
    return pieces, completed, deltas, errors


def analyse_reply(
    conversation: Conversation,
    emissions: Sequence[Emission],
    expected_tokens: int,
    delay_ms: float = 0.0,
) -> RebuiltReply:
    """Check one reply against the mock's last attempt at it (all of it lost if none)."""
    pieces, final, deltas, seq_errors = rebuild(conversation)
    emission = _attempt_shown(emissions, final)
    tokens: list[str] = emission["tokens"]
    alignment = align_tokens(tokens, pieces)
    lost = alignment.lost if emissions else expected_tokens
    rebuilt = "".join(text for _, text in pieces)
    expected = "".join(tokens)
    failure = _failure(conversation)
    if failure is not None:  # failed upstream, as the contract allows: nothing was lost
        alignment = Alignment([], lost=0, duplicated=0)
        lost, expected = 0, rebuilt if rebuilt == final else expected
    posted = conversation.post_started
    delta_times = (f.received_at for f in conversation.frames if f.event["type"] == DELTA)
    first_delta = next(delta_times, None)
    finished = conversation.finished and bool(conversation.frames)
    finished_at = conversation.frames[-1].received_at if finished else None
    error = conversation.error or failure
    if error is None and not emissions:
        error = "the mock has no emission record for this conversation"
    return RebuiltReply(
        lags_ms=lags_ms(alignment.received_at, emission["emitted"]),
        emitted=[
            sent
            for received, sent in zip(alignment.received_at, emission["emitted"], strict=False)
            if received is not None
        ],
        sent=len(tokens) if emissions else expected_tokens,
        delivered=alignment.delivered,
        lost=lost,
        duplicated=alignment.duplicated,
        seq_errors=seq_errors,
        ws_bytes=sum(frame.size for frame in conversation.frames),
        ws_frames=len(conversation.frames),
        deltas=deltas,
        post_ms=_ms(posted, conversation.post_answered),
        model_start_ms=_ms(posted, _model_started(emission, delay_ms)),
        first_token_ms=_ms(posted, first_delta),
        completion_ms=_ms(posted, finished_at),
        first_post=posted,
        last_frame=conversation.frames[-1].received_at if conversation.frames else None,
        matches=conversation.finished and rebuilt == expected and final == expected,
        attempts=len(emissions),
        error=error,
    )


def _failure(conversation: Conversation) -> str | None:
    """Why the reply ended `failed`, if it did."""
    if conversation.finished and conversation.frames:
        event = conversation.frames[-1].event
        if event["type"] == "message.failed":
            return f"reply failed: {event['message'].get('error', 'no error given')}"
    return None


def _attempt_shown(emissions: Sequence[Emission], completed: str | None) -> Emission:
    """The model request whose tokens the reply ended with: the last one, unless an earlier
    attempt's text is what completed (a retried request whose reply was kept)."""
    for emission in reversed(emissions):
        if "".join(emission["tokens"]) == completed:
            return emission
    return emissions[-1] if emissions else {"tokens": [], "emitted": []}


def _model_started(emission: Emission, delay_ms: float) -> float | None:
    """When the responder's model request reached the mock: a token's delay before the first,
    reasoning first when it streamed some.
    """
    emitted = emission.get("reasoning_emitted") or emission["emitted"]
    return emitted[0] - delay_ms / 1000 if emitted else None


def _per(count: int | None, tokens: int) -> float | None:
    return None if count is None else count / max(tokens, 1)


def _ms(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else (end - start) * 1000


def analyse_run(
    load: Load,
    conversations: Sequence[Conversation],
    emissions: Sequence[Emission],
    usage: dict[str, Usage],
    amqp: AmqpCounts | None,
    writes: Writes | None,
) -> RunResult:
    by_key: dict[str, list[Emission]] = {}
    for record in emissions:
        by_key.setdefault(record["key"].split(" ", 1)[0], []).append(record)
    for records in by_key.values():
        records.sort(key=lambda record: record["attempt"])
    replies = [
        analyse_reply(conversation, by_key.get(conversation.key, []), load.tokens, load.delay_ms)
        for conversation in conversations
    ]
    count = max(len(replies), 1)
    sent = sum(reply.sent for reply in replies)
    delivered = sum(reply.delivered for reply in replies)
    starts = [reply.first_post for reply in replies if reply.first_post is not None]
    ends = [reply.last_frame for reply in replies if reply.last_frame is not None]
    elapsed = max(ends) - min(starts) if starts and ends else 0.0
    accepted = sum(conversation.post_status == 202 for conversation in conversations)
    answers = [c.post_answered for c in conversations if c.post_answered is not None]
    last_post = max(answers, default=0.0)
    amqp_messages = None if amqp is None else amqp.messages + accepted
    documents = None if writes is None else writes.documents
    commands = None if writes is None else writes.commands
    write_count = documents if documents is not None else commands
    return RunResult(
        conversations=load.conversations,
        tokens=load.tokens,
        delay_ms=load.delay_ms,
        ramp_ms=load.ramp_ms,
        elapsed_s=elapsed,
        lag_ms=summarize(lag for reply in replies for lag in reply.lags_ms),
        steady_lag_ms=summarize(
            lag
            for reply in replies
            for lag, sent in zip(reply.lags_ms, reply.emitted, strict=True)
            if sent > last_post
        ),
        post_ms=summarize(reply.post_ms for reply in replies if reply.post_ms is not None),
        model_start_ms=summarize(
            reply.model_start_ms for reply in replies if reply.model_start_ms is not None
        ),
        first_token_ms=summarize(
            reply.first_token_ms for reply in replies if reply.first_token_ms is not None
        ),
        completion_ms=summarize(
            reply.completion_ms for reply in replies if reply.completion_ms is not None
        ),
        tokens_sent=sent,
        tokens_delivered=delivered,
        tokens_per_second=delivered / elapsed if elapsed > 0 else 0.0,
        lost=sum(reply.lost for reply in replies),
        duplicated=sum(reply.duplicated for reply in replies),
        seq_errors=sum(reply.seq_errors for reply in replies),
        mismatched_replies=sum(not reply.matches for reply in replies),
        failed_conversations=sum(reply.error is not None for reply in replies),
        retried_replies=sum(reply.attempts > 1 for reply in replies),
        ws_bytes_per_reply=sum(reply.ws_bytes for reply in replies) / count,
        ws_frames_per_reply=sum(reply.ws_frames for reply in replies) / count,
        deltas_per_reply=sum(reply.deltas for reply in replies) / count,
        amqp_messages=amqp_messages,
        amqp_messages_per_token=_per(amqp_messages, delivered),
        amqp_bytes=None if amqp is None else amqp.bytes,
        amqp_events={} if amqp is None else dict(amqp.events),
        mongo_write_commands=None if writes is None else writes.commands,
        mongo_documents_written=documents,
        mongo_writes_per_token=_per(write_count, delivered),
        usage=usage,
        errors=sorted({reply.error for reply in replies if reply.error is not None})[:10],
    )
