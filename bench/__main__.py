"""`python -m bench`: token lag, latency and cost of the streaming path under N conversations.

By default it starts the whole local stack (SecantusDB, the mock model, one responder and one
API as processes, RabbitMQ from RABBITMQ_URL in a throwaway vhost) and reuses it for every run;
with --api-url and --mock-url it measures a stack that is already running.

Examples:
    python -m bench --conversations 100 --tokens 200 --delay-ms 20
    python -m bench --sweep --find-max --json bench-results/sweep.json
"""

import argparse
import contextlib
import logging
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from bench.analysis import RunResult
from bench.client import Load
from bench.report import render, write_json
from bench.runner import Runner, SearchResult, disturbed, find_largest
from bench.stack import Target, local_stack, running_stack
from devstack.processes import ROOT

SWEEP = {20.0: [1, 20, 100, 200, 400], 5.0: [1, 20, 100]}
SWEEP_BURSTS = {20.0: [100, 200]}
"""Also in the sweep: every user posting at the same instant (--ramp-ms 0), a load as real as a
ramp and a harder one for everything that starts a reply."""


def _counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers like 1,20,100")
    return values


def _delays(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError("expected delays in ms like 5,20")
    return values


def _setting(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if not name or not _:
        raise argparse.ArgumentTypeError("expected NAME=VALUE, e.g. STORE_FLUSH_SECONDS=1")
    return name, value


def _pid(text: str) -> tuple[str, int]:
    name, _, pid = text.partition("=")
    if not name or not pid.isdigit():
        raise argparse.ArgumentTypeError("expected NAME=PID, e.g. responder=1234")
    return name, int(pid)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    load = parser.add_argument_group("load")
    load.add_argument(
        "--conversations", "--runs", "-n", type=_counts, default=[1],
        help="concurrent conversations; a list like 1,20,100 runs each in turn (default 1)",
    )  # fmt: skip
    load.add_argument("--tokens", "-t", type=int, default=200, help="tokens per reply")
    load.add_argument(
        "--reasoning-tokens", type=int, default=0,
        help="reasoning tokens the mock streams before each reply's text (default 0)",
    )  # fmt: skip
    load.add_argument(
        "--delay-ms", "-d", type=_delays, default=[20.0],
        help="ms between the mock's tokens; a list like 5,20 runs each (default 20)",
    )  # fmt: skip
    load.add_argument(
        "--ramp-ms", type=float, default=1000.0,
        help="spread the conversations' starts over this long (default 1000; 0: all at once)",
    )  # fmt: skip
    load.add_argument("--timeout", type=float, help="seconds a run may take (default: from load)")
    load.add_argument(
        "--sweep", action="store_true",
        help="the report's runs: N=1,20,100,200,400 at D=20, then N=1,20,100 at D=5",
    )  # fmt: skip
    load.add_argument(
        "--find-max", action="store_true",
        help="then search the largest N whose lag p99 stays within --p99-limit-ms, per delay",
    )  # fmt: skip
    load.add_argument("--p99-limit-ms", type=float, default=100.0)
    load.add_argument("--find-max-start", type=int, default=100)
    load.add_argument("--find-max-cap", type=int, default=1600)
    load.add_argument("--ws-compression", action="store_true", help="offer permessage-deflate")
    load.add_argument("--no-warmup", action="store_true")
    load.add_argument(
        "--retries", type=int, default=2,
        help="measure a run again when the broker connection dropped during it (default 2)",
    )  # fmt: skip
    load.add_argument(
        "--keep-data", action="store_true",
        help="keep the stored conversations between runs (the bench's own stack empties them)",
    )  # fmt: skip
    load.add_argument(
        "--quiet", type=float, metavar="PERCENT",
        help="before each run, wait (up to 3 min) until other processes use under PERCENT"
        " of one core: for a machine shared with other work",
    )  # fmt: skip

    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, help="also write every number to this file")
    output.add_argument("--no-progress", action="store_true")
    output.add_argument(
        "--profile", type=Path, metavar="DIR",
        help="record py-spy profiles of the Python processes per run into DIR (needs py-spy)",
    )  # fmt: skip
    output.add_argument(
        "--db-profile", action="store_true",
        help="MongoDB's profiler on every command of each run: the database's time per command",
    )  # fmt: skip
    output.add_argument(
        "--logs", type=Path, help="service logs of the bench's own stack (default bench-results/)"
    )

    target = parser.add_argument_group("a running stack instead of the bench's own")
    target.add_argument("--api-url", help="e.g. http://127.0.0.1:8000")
    target.add_argument("--mock-url", help="the mock model, e.g. http://127.0.0.1:8100")
    target.add_argument("--rabbitmq-url", help="AMQP URL with the services' vhost (AMQP counts)")
    target.add_argument("--mongodb-url", help="the services' MongoDB (write counts)")
    target.add_argument("--mongodb-db", default="chat")
    target.add_argument(
        "--pid", type=_pid, action="append", default=[],
        help="NAME=PID of a process to measure (api and mock are found by their ports)",
    )  # fmt: skip
    parser.add_argument(
        "--service-env", type=_setting, action="append", default=[], metavar="NAME=VALUE",
        help="an environment variable for both services of the bench's own stack, e.g."
        " STORE_FLUSH_SECONDS=1 (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--nice", type=int, metavar="N",
        help="run the bench and the stack it starts at this niceness (e.g. -5, needs root):"
        " on a shared machine, so other work disturbs the numbers less",
    )  # fmt: skip
    parser.add_argument(
        "--fresh-stack", action="store_true",
        help="start a new local stack for every run (cleaner RSS; slower)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if (args.api_url is None) != (args.mock_url is None):
        parser.error("--api-url and --mock-url go together")
    if args.api_url is not None and (args.fresh_stack or args.service_env):
        parser.error("--fresh-stack and --service-env need the bench's own stack")
    return args


def plan(args: argparse.Namespace) -> list[Load]:
    grid = SWEEP if args.sweep else {delay: args.conversations for delay in args.delay_ms}
    loads = [_load(args, count, delay) for delay, counts in grid.items() for count in counts]
    if args.sweep:
        loads += [
            _load(args, count, delay, ramp_ms=0.0)
            for delay, counts in SWEEP_BURSTS.items()
            for count in counts
        ]
    return loads


def _load(
    args: argparse.Namespace, conversations: int, delay_ms: float, ramp_ms: float | None = None
) -> Load:
    reply_s = (args.tokens + args.reasoning_tokens) * delay_ms / 1000
    timeout = args.timeout or 30 + 3 * reply_s + 0.05 * conversations
    return Load(
        conversations=conversations,
        tokens=args.tokens,
        delay_ms=delay_ms,
        ramp_ms=(args.ramp_ms if ramp_ms is None else ramp_ms) if conversations > 1 else 0.0,
        timeout_s=timeout,
        ws_compression=args.ws_compression,
        reasoning_tokens=args.reasoning_tokens,
    )


@contextlib.contextmanager
def _stack(args: argparse.Namespace, log_dir: Path) -> Iterator[Target]:
    if args.api_url is not None:
        yield running_stack(
            args.api_url,
            args.mock_url,
            args.rabbitmq_url,
            args.mongodb_url,
            args.mongodb_db,
            dict(args.pid),
        )
        return
    sys.stderr.write(f"starting the local stack (logs in {log_dir})\n")
    with local_stack(log_dir, service_env=dict(args.service_env)) as target:
        yield target


@dataclass
class Findings:
    results: list[RunResult] = field(default_factory=list)
    searches: list[SearchResult] = field(default_factory=list)
    error: str | None = None
    """Why the bench stopped early; the results so far are still reported."""


async def _measure_all(args: argparse.Namespace, log_dir: Path, outcome: Findings) -> None:
    """The planned runs (one stack, or one per run), then the searches on one stack."""
    loads = plan(args)
    show = not args.no_progress

    async def run_on(target: Target, batch: list[tuple[str, Load]], search: bool) -> None:
        async with Runner.open(
            target, show, args.profile, args.quiet, args.keep_data, args.db_profile
        ) as runner:
            if not args.no_warmup:
                await runner.warm_up()
            for label, load in batch:
                outcome.results.append(await _measure(args, runner, load, label, "run"))
            if search:
                for delay in list(SWEEP) if args.sweep else args.delay_ms:
                    outcome.searches.append(await _search(args, runner, delay, outcome.results))

    labelled = [(_label(index, len(loads), load), load) for index, load in enumerate(loads, 1)]
    if args.fresh_stack:
        for item in labelled:
            with _stack(args, log_dir) as target:
                await run_on(target, [item], search=False)
        labelled = []
    if labelled or args.find_max:
        with _stack(args, log_dir) as target:
            await run_on(target, labelled, search=args.find_max)


async def _measure(
    args: argparse.Namespace, runner: Runner, load: Load, label: str, phase: str
) -> RunResult:
    """One run, measured again (up to --retries times) if something outside disturbed it."""
    result = await runner.measure(load, label, phase)
    for _ in range(args.retries):
        if not disturbed(result):
            break
        sys.stderr.write(f"{label}: {'; '.join(result.errors)}; measuring it again\n")
        result = await runner.measure(load, label, phase)
    return result


async def _search(
    args: argparse.Namespace, runner: Runner, delay: float, results: list[RunResult]
) -> SearchResult:
    async def probe(load: Load) -> RunResult:
        load = _load(args, load.conversations, delay)
        label = f"find-max D={delay:g}ms N={load.conversations}"
        result = await _measure(args, runner, load, label, "search")
        results.append(result)
        return result

    base = _load(args, args.find_max_start, delay)
    return await find_largest(
        probe, base, args.p99_limit_ms, args.find_max_start, args.find_max_cap
    )


def _label(index: int, total: int, load: Load) -> str:
    burst = " burst" if load.conversations > 1 and load.ramp_ms == 0 else ""
    shape = f"N={load.conversations}{burst} D={load.delay_ms:g}ms T={load.tokens}"
    return f"run {index}/{total} {shape}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    for noisy in ("aio_pika", "aiormq"):  # the tap's reconnections are reported per run instead
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the children inherit it too
    if args.nice is not None:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # the stack's processes inherit it
    log_dir = args.logs or ROOT / "bench-results" / time.strftime("logs-%Y%m%d-%H%M%S")
    outcome = Findings()
    try:
        uvloop.run(_measure_all(args, log_dir, outcome))
    except (RuntimeError, TimeoutError, OSError) as error:
        outcome.error = str(error)
    if outcome.results:
        print(render(outcome.results, outcome.searches))
        if args.json is not None:
            write_json(args.json, argv, outcome.results, outcome.searches)
            print(f"\nwrote {args.json}")
    if outcome.error is not None:
        sys.exit(f"bench: error: {outcome.error}")


if __name__ == "__main__":
    main()
