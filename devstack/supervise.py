"""Keep the local stack's children running: a child that dies is restarted, with backoff.

A developer killing the API (or the API crashing) should see it said, and get it back, rather
than a stack that silently stopped working with a defunct process in it.
"""

import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

FIRST_DELAY = 1.0
LONGEST_DELAY = 30.0
STABLE_SECONDS = 30.0
"""A child that ran this long before dying is restarted after FIRST_DELAY again."""


class Supervised(Protocol):
    """What the supervisor needs of a child: a devstack Process, or a fake in the unit tests."""

    name: str
    log_path: Path

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def running(self) -> bool: ...

    def start(self) -> object: ...


@dataclass
class Child:
    process: Supervised
    started_at: float
    delay: float = FIRST_DELAY
    restart_at: float | None = None


def exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Supervisor:
    """Restarts each child that exited, waiting FIRST_DELAY, then twice as long each time.

    `clock` tells the time the waits are measured in (the unit tests pass a fake one).
    """

    def __init__(
        self,
        processes: Sequence[Supervised],
        say: Callable[[str], None] = print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        now = clock()
        self.children = [Child(process, now) for process in processes]
        self.say = say

    def check(self) -> None:
        """Notice children that exited (reaping them), and restart those whose wait is over."""
        now = self.clock()
        for child in self.children:
            process = child.process
            if child.restart_at is None and not process.running():
                if now - child.started_at >= STABLE_SECONDS:
                    child.delay = FIRST_DELAY
                child.restart_at = now + child.delay
                self.say(
                    f"devstack: {process.name} exited ({exit_reason(process.returncode)}); "
                    f"restarting it in {child.delay:g}s (log: {process.log_path})"
                )
                child.delay = min(child.delay * 2, LONGEST_DELAY)
            elif child.restart_at is not None and now >= child.restart_at:
                process.start()
                child.started_at, child.restart_at = now, None
                self.say(f"devstack: {process.name} restarted (pid {process.pid})")

    def run(self, interval: float = 0.5) -> None:
        """Watch until interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt)."""
        while True:
            self.check()
            time.sleep(interval)
