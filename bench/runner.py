"""One measured run, and the search for the largest load that keeps lag in bounds."""

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import httpx
import psutil

from bench.analysis import RunResult, analyse_run
from bench.client import Load, run_load
from bench.probes import AmqpTap, MongoProfiler, MongoWrites, ProcessMonitor, wait_quiet
from bench.profiling import profiling
from bench.stack import Target

PROFILER_ATTACH_SECONDS = 0.5
SETTLE_SECONDS = 0.5
QUIET_WAIT_SECONDS = 180.0
BROKER_DROPPED = "the broker connection dropped"
RETRIED = "retried"
"""After the last reply completes: time for the tap to see the last batch."""


class Runner:
    """Runs loads against one target, with the probes that target allows."""

    def __init__(
        self,
        target: Target,
        show_progress: bool = True,
        profile_dir: Path | None = None,
        quiet_percent: float | None = None,
        keep_data: bool = False,
    ) -> None:
        self.target = target
        self.show_progress = show_progress
        self.profile_dir = profile_dir
        self.quiet_percent = quiet_percent
        self.keep_data = keep_data or not target.owned
        self._tap: AmqpTap | None = None
        self._writes: MongoWrites | None = None
        self._profiler: MongoProfiler | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        target: Target,
        show_progress: bool = True,
        profile_dir: Path | None = None,
        quiet_percent: float | None = None,
        keep_data: bool = False,
        database_profile: bool = False,
    ) -> AsyncIterator["Runner"]:
        runner = cls(target, show_progress, profile_dir, quiet_percent, keep_data)
        if target.rabbitmq_url is not None:
            runner._tap = AmqpTap(target.rabbitmq_url)
            await runner._tap.ensure_open()
        if target.mongodb_url is not None:
            runner._writes = MongoWrites(target.mongodb_url, target.mongodb_db)
            if database_profile:
                runner._profiler = MongoProfiler(target.mongodb_url, target.mongodb_db)
        try:
            yield runner
        finally:
            if runner._tap is not None:
                await runner._tap.close()
            if runner._writes is not None:
                runner._writes.close()
            if runner._profiler is not None:
                runner._profiler.close()

    async def warm_up(self) -> None:
        """A few short replies, so imports, pools and caches are warm before anything counts."""
        load = Load(conversations=4, tokens=20, delay_ms=1, timeout_s=30)
        await run_load(load, self.target.api_url, "warmup" + uuid.uuid4().hex[:6], "warm-up", False)
        await self._reset_mock()

    async def measure(self, load: Load, label: str, phase: str = "run") -> RunResult:
        run_id = uuid.uuid4().hex[:8]
        if self._writes is not None and not self.keep_data:
            await asyncio.to_thread(self._writes.clear)
        if self.quiet_percent is not None:
            others = await wait_quiet(self.target.pids, self.quiet_percent, QUIET_WAIT_SECONDS)
            if others >= self.quiet_percent and self.show_progress:
                sys.stderr.write(f"{label}: other processes still use {others:.0f}% CPU\n")
        monitor = ProcessMonitor(self.target.pids)
        mark = await asyncio.to_thread(self._writes.mark) if self._writes else None
        if self._tap is not None:
            await self._tap.ensure_open()
            self._tap.take()
        with contextlib.ExitStack() as stack:
            profiles: dict[str, Path] = {}
            if self.profile_dir is not None:
                profiles = stack.enter_context(profiling(self.profile_dir, label, self.target.pids))
                await asyncio.sleep(PROFILER_ATTACH_SECONDS)
            if self._profiler is not None:
                await asyncio.to_thread(self._profiler.start)
            monitor.start()
            conversations = await run_load(
                load, self.target.api_url, run_id, label, self.show_progress
            )
            await asyncio.sleep(SETTLE_SECONDS)
            usage = await monitor.stop()
            commands = (
                await asyncio.to_thread(self._profiler.stop) if self._profiler is not None else []
            )
        amqp = self._tap.take() if self._tap is not None else None
        writes = (
            await asyncio.to_thread(self._writes.since, mark)
            if self._writes is not None and mark is not None
            else None
        )
        async with httpx.AsyncClient(base_url=self.target.mock_url, timeout=60) as http:
            response = await http.get("/_mock/emissions", params={"contains": f"bench-{run_id}-"})
            response.raise_for_status()
            emissions = response.json()
        await self._reset_mock()
        result = analyse_run(load, conversations, emissions, usage, amqp, writes)
        result.profiles = {name: str(path) for name, path in profiles.items()}
        result.database_commands = commands
        result.phase = phase
        if amqp is not None and amqp.reconnections:
            result.errors.append(f"{BROKER_DROPPED} {amqp.reconnections}x")
        elif amqp is not None and amqp.messages == 0 and result.tokens_delivered:
            result.errors.append(f"{BROKER_DROPPED}: the AMQP tap saw no events")
        if result.retried_replies:
            result.errors.append(
                f"{RETRIED}: {result.retried_replies} replies asked the model again"
            )
        gone = [name for name, pid in self.target.pids.items() if not _alive(pid)]
        if gone:
            result.errors.append(f"exited during the run: {', '.join(gone)}")
            if self.target.owned:
                raise RuntimeError(
                    f"{', '.join(gone)} exited during the run {label!r} (killed from outside?);"
                    " see the logs"
                )
        return result

    async def _reset_mock(self) -> None:
        """Keep the bench's own mock's journal small; never touch a mock someone else runs."""
        if self.target.owned:
            async with httpx.AsyncClient(base_url=self.target.mock_url, timeout=10) as http:
                await http.post("/_mock/reset")


def disturbed(result: RunResult) -> bool:
    """Whether something outside the load broke the run: a broker restart, say, which makes
    the services retry replies (an overloaded responder whose lease ran out does too)."""
    return any(error.startswith((BROKER_DROPPED, RETRIED)) for error in result.errors)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Percentiles(Protocol):
    @property
    def p99(self) -> float: ...


class Outcome(Protocol):
    """What `within` reads of a run: a RunResult has it."""

    @property
    def lost(self) -> int: ...

    @property
    def duplicated(self) -> int: ...

    @property
    def failed_conversations(self) -> int: ...

    @property
    def lag_ms(self) -> Percentiles: ...


def within(result: Outcome, p99_limit_ms: float) -> bool:
    """The load is sustained: every token delivered once, lag p99 within the limit."""
    return (
        result.lost == 0
        and result.duplicated == 0
        and result.failed_conversations == 0
        and result.lag_ms.p99 <= p99_limit_ms
    )


@dataclass(frozen=True, slots=True)
class SearchResult:
    delay_ms: float
    p99_limit_ms: float
    largest_within: int
    """0: not even the first load held."""
    smallest_beyond: int | None
    """None: the cap was reached without breaking the limit."""


async def find_largest(
    measure: Callable[[Load], Awaitable[RunResult]],
    base: Load,
    p99_limit_ms: float,
    start: int,
    cap: int,
) -> SearchResult:
    """Double from `start` until the limit breaks, then bisect to within 10% (or 10).

    A load that breaks the limit is measured once more and counts as beyond it only if it
    breaks it again: on a shared machine one disturbed run must not end the search.
    """
    good, bad = 0, None
    count = start
    while True:
        load = replace(base, conversations=count)
        held = within(await measure(load), p99_limit_ms)
        if not held:
            held = within(await measure(load), p99_limit_ms)
        if held:
            good = count
        else:
            bad = count
        if bad is None:
            if count >= cap:
                break
            count = min(count * 2, cap)
        else:
            if bad - good <= max(10, good // 10):
                break
            count = (good + bad) // 2
    return SearchResult(base.delay_ms, p99_limit_ms, good, bad)
