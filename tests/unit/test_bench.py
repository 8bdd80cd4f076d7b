"""The benchmark's pure parts: statistics, lining deltas up with tokens, checking replies."""

import math
from typing import Any

import pytest

from bench.__main__ import parse_args, plan
from bench.analysis import analyse_run, rebuild
from bench.client import Conversation, Frame, Load
from bench.metrics import align_tokens, lags_ms, percentile, summarize
from bench.probes import AmqpCounts, Usage, Writes, _busiest_second, _command_time
from bench.report import database_table, render
from bench.runner import SearchResult, find_largest, within

TOKENS = ["apple ", "river ", "stone ", "cloud ", "green "]


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 99) == 7.0


def test_percentile_of_nothing_is_nan_and_bad_q_is_refused() -> None:
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_reports_tail_and_mean() -> None:
    summary = summarize(float(value) for value in range(1, 101))
    assert summary.count == 100
    assert summary.p50 == pytest.approx(50.5)
    assert summary.p99 == pytest.approx(99.01)
    assert summary.max == 100
    assert summary.mean == pytest.approx(50.5)
    assert math.isnan(summarize([]).p99)


def test_one_token_per_delta_gets_each_deltas_time() -> None:
    pieces = [(10.0 + index, token) for index, token in enumerate(TOKENS)]
    alignment = align_tokens(TOKENS, pieces)
    assert alignment.received_at == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert (alignment.lost, alignment.duplicated, alignment.delivered) == (0, 0, 5)


def test_coalesced_deltas_give_every_token_in_them_the_same_time() -> None:
    pieces = [(1.0, "apple "), (2.0, "river stone cloud "), (3.0, "green ")]
    alignment = align_tokens(TOKENS, pieces)
    assert alignment.received_at == [1.0, 2.0, 2.0, 2.0, 3.0]
    assert alignment.lost == alignment.duplicated == 0


def test_a_token_split_across_deltas_counts_when_its_last_part_arrives() -> None:
    pieces = [(1.0, "apple ri"), (2.0, "ver stone cloud green ")]
    assert align_tokens(TOKENS, pieces).received_at == [1.0, 2.0, 2.0, 2.0, 2.0]


def test_missing_tokens_are_lost_and_repeated_ones_duplicated() -> None:
    lost = align_tokens(TOKENS, [(1.0, "apple river "), (2.0, "cloud green ")])
    assert (lost.lost, lost.duplicated) == (1, 0)
    assert lost.received_at == [1.0, 1.0, None, 2.0, 2.0]

    repeated = align_tokens(TOKENS, [(1.0, "apple river "), (2.0, "river stone cloud green ")])
    assert (repeated.lost, repeated.duplicated) == (0, 1)
    assert repeated.delivered == 5

    truncated = align_tokens(TOKENS, [(1.0, "apple river ")])
    assert (truncated.lost, truncated.duplicated, truncated.delivered) == (3, 0, 2)

    assert align_tokens(TOKENS, []).lost == 5


def test_lags_are_receive_minus_emission_in_ms_for_received_tokens() -> None:
    assert lags_ms([1.002, None, 1.05], [1.0, 1.01, 1.02]) == pytest.approx([2.0, 30.0])


def _frame(at: float, event: dict[str, Any]) -> Frame:
    return Frame(at, 100, event)


def _message(text: str, seq: int, status: str, attempt: int = 1) -> dict[str, Any]:
    return {
        "id": "m1",
        "conversationId": "c1",
        "from": "assistant",
        "message": text,
        "status": status,
        "timestamp": "2026-01-01T00:00:00.000Z",
        "seq": seq,
        "attempt": attempt,
    }


def _delta(seq: int, text: str) -> dict[str, Any]:
    return {
        "type": "message.delta",
        "conversationId": "c1",
        "messageId": "m1",
        "seq": seq,
        "delta": text,
    }


def _completed(message: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message.completed", "message": message}


def _conversation(frames: list[Frame]) -> Conversation:
    conversation = Conversation(key="bench-x-000000", conversation_id="c1", frames=frames)
    conversation.post_started, conversation.post_answered = 0.0, 0.01
    conversation.post_status, conversation.finished = 202, True
    return conversation


def test_rebuild_follows_seq_and_starts_over_on_a_retry() -> None:
    frames = [
        _frame(0.0, {"type": "snapshot", "conversationId": "c1", "messages": []}),
        _frame(0.1, {"type": "message.created", "message": _message("", 0, "created", 0)}),
        _frame(0.2, {"type": "message.updated", "message": _message("", 0, "streaming")}),
        _frame(0.3, _delta(1, "apple ")),
        _frame(0.4, _delta(3, "stone ")),  # a gap: seq 2 never came
        _frame(0.5, {"type": "message.updated", "message": _message("", 0, "streaming", 2)}),
        _frame(0.6, _delta(1, "apple river ")),
        _frame(0.7, _completed(_message("apple river ", 1, "completed", 2))),
    ]
    pieces, completed, deltas, seq_errors = rebuild(_conversation(frames))
    assert pieces == [(0.6, "apple river ")]
    assert completed == "apple river "
    assert (deltas, seq_errors) == (3, 1)


def test_analyse_run_checks_text_and_measures_lag_and_cost() -> None:
    frames = [
        _frame(1.000, {"type": "snapshot", "conversationId": "c1", "messages": []}),
        _frame(1.010, {"type": "message.created", "message": _message("", 0, "created", 0)}),
        _frame(1.020, {"type": "message.updated", "message": _message("", 0, "streaming")}),
        _frame(1.032, _delta(1, "apple river ")),
        _frame(1.052, _delta(2, "stone cloud green ")),
        _frame(1.060, _completed(_message("".join(TOKENS), 2, "completed"))),
    ]
    emission = {
        "key": "bench-x-000000 [mock tokens=5 delay_ms=10]",
        "attempt": 0,
        "tokens": TOKENS,
        "emitted": [1.020, 1.030, 1.040, 1.045, 1.050],
    }
    load = Load(conversations=1, tokens=5, delay_ms=10)
    usage = {"api": Usage(cpu_seconds=0.5, cpu_percent=50.0, peak_rss_mb=60.0)}
    amqp = AmqpCounts(messages=4, bytes=1000)
    result = analyse_run(load, [_conversation(frames)], [emission], usage, amqp, Writes(3, 5))
    assert result.lag_ms.count == result.steady_lag_ms.count == 5
    assert result.lag_ms.max == pytest.approx(12.0)
    assert result.lag_ms.p50 == pytest.approx(7.0)  # lags 12, 2, 12, 7, 2
    assert (result.lost, result.duplicated, result.mismatched_replies) == (0, 0, 0)
    assert result.tokens_delivered == 5
    assert result.ws_bytes_per_reply == 600
    assert result.deltas_per_reply == 2
    assert result.amqp_messages == 5  # four event batches and the chat-message job
    assert result.mongo_writes_per_token == pytest.approx(1.0)
    assert result.post_ms.p50 == pytest.approx(10.0)
    assert result.completion_ms.p50 == pytest.approx(1060.0)
    text = render([result], [SearchResult(20, 100, 400, 800)])
    assert "| 1 | 10 |" in text
    assert "largest N with lag p99 <= 100ms and nothing lost: 400" in text


def test_a_reply_the_mock_never_sent_counts_as_all_lost() -> None:
    load = Load(conversations=1, tokens=5, delay_ms=10)
    result = analyse_run(load, [_conversation([])], [], {}, None, None)
    assert (result.lost, result.tokens_delivered, result.failed_conversations) == (5, 0, 1)
    assert result.amqp_messages is None and result.mongo_writes_per_token is None


async def test_find_largest_doubles_then_bisects() -> None:
    tried: list[int] = []

    async def measure(load: Load) -> Any:
        tried.append(load.conversations)
        frames_ok = load.conversations <= 300
        return _Result(p99=50.0 if frames_ok else 500.0)

    search = await find_largest(measure, Load(100, 200, 20), 100.0, start=100, cap=1600)
    assert tried[:3] == [100, 200, 400]
    assert 270 <= search.largest_within <= 300
    assert search.smallest_beyond is not None and search.smallest_beyond > 300


class _Summary:
    def __init__(self, p99: float) -> None:
        self.p99 = p99


class _Result:
    def __init__(self, p99: float) -> None:
        self.lost = self.duplicated = self.failed_conversations = 0
        self.lag_ms = _Summary(p99)


def test_within_needs_every_token_and_the_lag_limit() -> None:
    assert within(_Result(99.0), 100.0)
    assert not within(_Result(101.0), 100.0)


def test_busiest_second_finds_the_peak_cpu_rate() -> None:
    # 0.1 s samples of cumulative CPU seconds: idle, then one second at a full core, then half.
    samples = [(index / 10, 0.0) for index in range(11)]
    samples += [(1.0 + index / 10, index / 10) for index in range(1, 11)]
    samples += [(2.0 + index / 10, 1.0 + index / 20) for index in range(1, 11)]
    assert _busiest_second(samples) == pytest.approx(100.0)
    assert _busiest_second(samples[:5]) == 0.0  # under a second of samples: no rate


def test_a_reply_that_failed_upstream_counts_as_failed_not_lost() -> None:
    failed = _message("apple river ", 1, "failed") | {"error": "model API timed out"}
    frames = [
        _frame(1.00, {"type": "snapshot", "conversationId": "c1", "messages": []}),
        _frame(1.01, {"type": "message.updated", "message": _message("", 0, "streaming")}),
        _frame(1.02, _delta(1, "apple river ")),
        _frame(1.03, {"type": "message.failed", "message": failed}),
    ]
    emission = {
        "key": "bench-x-000000 [mock]",
        "attempt": 0,
        "tokens": TOKENS,
        "emitted": [1.0] * 5,
    }
    load = Load(conversations=1, tokens=5, delay_ms=10)
    result = analyse_run(load, [_conversation(frames)], [emission], {}, None, None)
    assert (result.lost, result.duplicated, result.mismatched_replies) == (0, 0, 0)
    assert result.failed_conversations == 1
    assert result.errors == ["reply failed: model API timed out"]


def test_the_sweep_also_measures_bursts() -> None:
    loads = plan(parse_args(["--sweep"]))
    bursts = [(load.conversations, load.delay_ms) for load in loads if load.ramp_ms == 0]
    assert (100, 20.0) in bursts and (200, 20.0) in bursts
    ramped = [load for load in loads if load.conversations == 100 and load.delay_ms == 20]
    assert sorted(load.ramp_ms for load in ramped) == [0.0, 1000.0]


def test_database_time_is_summed_per_command_and_per_document() -> None:
    timings: list[tuple[float, int | None]] = [(104.0, 99), (4.0, 1)]
    claims = _command_time("update messages", timings)
    assert (claims.count, claims.documents, claims.total_ms, claims.max_ms) == (2, 100, 108, 104)
    reads = _command_time("find messages", [(2.0, None), (3.0, None)])
    assert reads.documents is None
    table = database_table([claims, reads])
    assert "| update messages | 2 | 100 | 108 | 104 | 104 | 1.08 |" in table
    assert "| find messages | 2 | n/a | 5 | 3 | 3 | n/a |" in table
