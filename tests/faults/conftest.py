"""Fault-suite fixtures: a stack per module, the counts for the report, and a broker safety net.

Whatever a fault test does to RabbitMQ, the broker runs again when the session ends: each test
restarts it in `finally`, and `rabbit_safety_net` checks once more at session teardown.
"""

import contextlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.audit import ResultBook
from tests.faults.broker_control import ensure_rabbit_running, rabbit_running
from tests.faults.stack import FaultStack, StackFactory, fault_stack

LOG_TAIL_LINES = 25

_stack_dirs: dict[str, list[Path]] = {}
_book = ResultBook()


@pytest.fixture(scope="session", autouse=True)
def rabbit_safety_net() -> Iterator[None]:
    """The broker must be running before the fault tests and after them, pass or fail."""
    ensure_rabbit_running()
    try:
        yield
    finally:
        ensure_rabbit_running()
        assert rabbit_running(), "RabbitMQ is not running after the fault tests"


@pytest.fixture(scope="session")
def results() -> Iterator[ResultBook]:
    """Per-fault counts of lost, stuck and duplicated replies, written to a JSON file."""
    try:
        yield _book
    finally:
        _book.save()
        print(f"\nfault results written to {_book.path}")


@pytest.fixture(scope="module")
def make_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> StackFactory:
    """Start a private stack for the module, with its settings; its logs show on failure."""

    @contextlib.contextmanager
    def make(name: str, **options: Any) -> Iterator[FaultStack]:
        base = tmp_path_factory.mktemp(f"fault-{name}")
        _stack_dirs.setdefault(request.module.__name__, []).append(base)
        with fault_stack(name, base, **options) as stack:
            yield stack

    return make


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, the tail of every fault-stack log: the processes' side of the story."""
    report = yield
    if report.failed and "faults" in item.keywords:
        module = getattr(item, "module", None)
        for directory in _stack_dirs.get(getattr(module, "__name__", ""), []):
            for path in sorted(directory.rglob("*.log")):
                lines = path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                report.sections.append((f"log {path.name}", "\n".join(lines)))
    return report
