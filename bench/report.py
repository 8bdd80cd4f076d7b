"""The tables on stdout (Markdown, ready for docs/benchmarks.md), the targets, and JSON."""

import dataclasses
import itertools
import math
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.analysis import RunResult
from bench.probes import CommandTime, Usage
from bench.profiling import hotspot_lines
from bench.runner import SearchResult

SERVICES = ("api", "responder", "mock", "secantus", "rabbitmq", "bench", "others", "machine")
NO_RSS = frozenset({"rabbitmq", "others", "machine"})


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _count(result: RunResult) -> str:
    """N, starred for the probes of --find-max."""
    return f"{result.conversations}{'*' if result.phase == 'search' else ''}"


def _ramp(result: RunResult) -> str:
    """Over how long the starts were spread: `burst` when all came at once."""
    return "burst" if result.conversations > 1 and result.ramp_ms == 0 else f"{result.ramp_ms:g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def latency_table(results: Sequence[RunResult]) -> str:
    header = [
        "N", "D ms", "ramp ms", "tokens/s",
        "lag p50", "lag p95", "lag p99", "lag max", "steady p99",
        "POST p50", "POST p99", "model p50", "model p99", "TTFT p50", "TTFT p99",
        "done p50 s", "done p99 s",
        "lost", "dup", "failed",
    ]  # fmt: skip
    rows = [
        [
            _count(r),
            f"{r.delay_ms:g}",
            _ramp(r),
            _number(r.tokens_per_second, 0),
            _number(r.lag_ms.p50),
            _number(r.lag_ms.p95),
            _number(r.lag_ms.p99),
            _number(r.lag_ms.max),
            _number(r.steady_lag_ms.p99),
            _number(r.post_ms.p50),
            _number(r.post_ms.p99),
            _number(r.model_start_ms.p50),
            _number(r.model_start_ms.p99),
            _number(r.first_token_ms.p50),
            _number(r.first_token_ms.p99),
            _number(r.completion_ms.p50 / 1000, 2),
            _number(r.completion_ms.p99 / 1000, 2),
            str(r.lost),
            str(r.duplicated),
            str(r.failed_conversations),
        ]
        for r in results
    ]
    return _table(header, rows)


def cost_table(results: Sequence[RunResult]) -> str:
    services = [name for name in SERVICES if any(name in r.usage for r in results)]
    header = [
        "N", "D ms", "ramp ms", "WS KB/reply", "deltas/reply", "AMQP msg/token", "Mongo docs/token",
        "Mongo cmds/token",
    ]  # fmt: skip
    header += [f"CPU {name} s (%)" for name in services]
    header += [f"RSS {name} MB" for name in services if name not in NO_RSS]
    rows = []
    for r in results:
        tokens = max(r.tokens_delivered, 1)
        row = [
            _count(r),
            f"{r.delay_ms:g}",
            _ramp(r),
            _number(r.ws_bytes_per_reply / 1024),
            _number(r.deltas_per_reply),
            _number(r.amqp_messages_per_token, 3),
            _number(
                None if r.mongo_documents_written is None else r.mongo_documents_written / tokens,
                3,
            ),
            _number(None if r.mongo_write_commands is None else r.mongo_write_commands / tokens, 3),
        ]
        for name in services:
            usage = r.usage.get(name)
            row.append("n/a" if usage is None else _cpu_cell(usage, name in NO_RSS))
        for name in services:
            if name not in NO_RSS:
                usage = r.usage.get(name)
                row.append("n/a" if usage is None else f"{usage.peak_rss_mb:.0f}")
        rows.append(row)
    return _table(header, rows)


def database_table(commands: Sequence[CommandTime]) -> str:
    header = ["command", "count", "documents", "total", "p50", "max", "per document"]
    rows = [
        [
            command.command,
            str(command.count),
            "n/a" if command.documents is None else str(command.documents),
            _number(command.total_ms, 0),
            _number(command.p50_ms, 0),
            _number(command.max_ms, 0),
            _number(command.total_ms / command.documents if command.documents else None, 2),
        ]
        for command in commands
    ]
    return _table(header, rows)


def _cpu_cell(usage: Usage, whole: bool) -> str:
    """CPU seconds (average % of a core, busiest second's %): the peak shows saturation."""
    if whole:
        return f"{usage.cpu_seconds:.1f} ({usage.cpu_percent:.0f}%)"
    return f"{usage.cpu_seconds:.1f} ({usage.cpu_percent:.0f}%, {usage.peak_cpu_percent:.0f}%)"


def search_lines(searches: Sequence[SearchResult]) -> list[str]:
    lines = []
    for search in searches:
        beyond = (
            "not reached within the cap"
            if search.smallest_beyond is None
            else f"broken at N={search.smallest_beyond}"
        )
        lines.append(
            f"- D={search.delay_ms:g}ms: largest N with lag p99 <= {search.p99_limit_ms:g}ms "
            f"and nothing lost: {search.largest_within} ({beyond})"
        )
    return lines


def _check(ok: bool, text: str) -> str:
    return f"- [{'x' if ok else ' '}] {'PASS' if ok else 'FAIL'}: {text}"


def target_lines(results: Sequence[RunResult], searches: Sequence[SearchResult]) -> list[str]:
    """The issue's targets, for whichever of them the planned runs (not the probes) cover."""
    lines = []
    results = [r for r in results if r.phase == "run"]
    for r in results:
        if r.tokens != 200:
            continue
        lag = f"lag p50 {r.lag_ms.p50:.1f}ms, p99 {r.lag_ms.p99:.1f}ms"
        if r.conversations == 1 and r.delay_ms == 5:
            ok = r.lag_ms.p50 <= 2 and r.lag_ms.p99 <= 10
            lines.append(_check(ok, f"N=1 D=5: {lag} (<=2, <=10)"))
        if r.conversations == 100 and r.delay_ms == 20 and r.ramp_ms == 0:
            lines += _burst_lines(r)
        elif r.conversations == 100 and r.delay_ms == 20:
            delivered = r.lost == 0 and r.duplicated == 0 and r.failed_conversations == 0
            lines.append(_check(delivered, f"N=100 D=20: lost {r.lost}, duplicated {r.duplicated}"))
            lines.append(
                _check(r.lag_ms.p50 <= 10 and r.lag_ms.p99 <= 50, f"N=100 D=20: {lag} (<=10, <=50)")
            )
            lines.append(
                _check(r.post_ms.p50 <= 20, f"N=100 D=20: POST p50 {r.post_ms.p50:.1f}ms (<=20)")
            )
    for search in searches:
        if search.delay_ms == 20:
            lines.append(
                _check(
                    search.largest_within >= 200,
                    f"largest N at D=20 with lag p99<=100ms: {search.largest_within} (>=200)",
                )
            )
    writes = [r.mongo_writes_per_token for r in results if r.mongo_writes_per_token is not None]
    if writes:
        text = f"MongoDB writes/token max {max(writes):.3f} (<=0.1)"
        lines.append(_check(max(writes) <= 0.1, text))
    sized = [r for r in results if r.tokens == 200]
    if sized:
        largest = max(r.ws_bytes_per_reply for r in sized) / 1024
        lines.append(_check(largest <= 32, f"WS KB per 200-token reply max {largest:.1f} (<=32)"))
        for delay in sorted({r.delay_ms for r in sized}):
            series = sorted(
                (r for r in sized if r.delay_ms == delay), key=lambda r: r.conversations
            )
            sizes = [r.ws_bytes_per_reply for r in series]
            falling = all(later <= earlier * 1.02 for earlier, later in itertools.pairwise(sizes))
            shown = ", ".join(
                f"{r.conversations}: {r.ws_bytes_per_reply / 1024:.1f}" for r in series
            )
            text = f"WS KB per reply falls as load rises at D={delay:g} (N: KB {shown})"
            lines.append(_check(falling, text))
    return lines


def _burst_lines(r: RunResult) -> list[str]:
    """Issue 9.2's targets for 100 users posting at the same instant."""
    where = "N=100 burst D=20"
    delivered = r.lost == 0 and r.duplicated == 0 and r.failed_conversations == 0
    lag = f"lag p50 {r.lag_ms.p50:.1f}ms, p99 {r.lag_ms.p99:.1f}ms"
    return [
        _check(delivered, f"{where}: lost {r.lost}, duplicated {r.duplicated}"),
        _check(r.post_ms.p50 <= 30, f"{where}: POST p50 {r.post_ms.p50:.1f}ms (<=30)"),
        _check(
            r.model_start_ms.p50 <= 100,
            f"{where}: model request p50 {r.model_start_ms.p50:.1f}ms after the POST (<=100)",
        ),
        _check(
            r.first_token_ms.p50 <= 150,
            f"{where}: first token p50 {r.first_token_ms.p50:.1f}ms (<=150)",
        ),
        _check(r.lag_ms.p50 <= 10 and r.lag_ms.p99 <= 50, f"{where}: {lag} (<=10, <=50)"),
    ]


def render(results: Sequence[RunResult], searches: Sequence[SearchResult]) -> str:
    parts = [
        "Latency (ms unless marked). lag: WebSocket receive - mock emission, per token;"
        " model: POST sent -> the model request reaches the mock; TTFT: POST sent -> first"
        " delta; done: POST sent -> message.completed; steady p99: lag p99 of the tokens sent"
        " after the last POST was answered (no start-ups competing)",
        "",
        latency_table(results),
        "",
        "Cost. CPU: seconds over the run (average % of one core, % in the busiest second);"
        " `others`: processes not in the test, `machine`: everything (200% = both cores)."
        " RSS: peak MB.",
        "",
        cost_table(results),
    ]
    if searches:
        parts += ["", "Largest load (N* in the tables: its probes)", "", *search_lines(searches)]
    for result in results:
        if result.database_commands:
            title = (
                f"MongoDB time per command N={result.conversations} {_ramp(result)}"
                f" D={result.delay_ms:g}ms (the database's profiler; ms)"
            )
            parts += ["", title, "", database_table(result.database_commands)]
        if result.profiles:
            title = f"Profile N={result.conversations} D={result.delay_ms:g}ms (py-spy)"
            paths = {name: Path(path) for name, path in result.profiles.items()}
            parts += ["", title, "", *hotspot_lines(paths)]
    disturbed = [
        f"- N={r.conversations} D={r.delay_ms:g}ms: {'; '.join(r.errors)}"
        for r in results
        if r.errors
    ]
    if disturbed:
        parts += ["", "Errors", "", *disturbed]
    targets = target_lines(results, searches)
    if targets:
        parts += ["", "Targets", "", *targets]
    return "\n".join(parts)


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    model = next(
        (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), ""
    )
    return {
        "git": _git(),
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


def _git() -> str:
    """The commit measured, and whether the services differed from it (work in progress)."""

    def run(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        except OSError:
            return ""
        return done.stdout.strip()

    commit = run("rev-parse", "--short", "HEAD") or "unknown"
    changed = run("status", "--porcelain", "--", "shared", "services", "mock_openai")
    return f"{commit}+changes" if changed else commit


def write_json(
    path: Path,
    argv: Sequence[str],
    results: Sequence[RunResult],
    searches: Sequence[SearchResult],
) -> None:
    document = {
        "command": "python -m bench " + " ".join(argv),
        "machine": machine(),
        "runs": [dataclasses.asdict(result) for result in results],
        "searches": [dataclasses.asdict(search) for search in searches],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
