"""scripts/dev's supervisor: a dead child is restarted after a wait that doubles, up to a cap,
and starts over once the child has run for a while. Fake processes and a fake clock: the
supervisor's checks are driven as its loop would drive them, without sleeping.
"""

import signal
from pathlib import Path

import pytest

from devstack.supervise import FIRST_DELAY, LONGEST_DELAY, STABLE_SECONDS, Supervisor

CHECK_INTERVAL = 0.5
"""How often the loop checks (Supervisor.run's default); every wait here is a multiple of it."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    """A child that runs until the test makes it exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.log_path = Path(f"/logs/{name}.log")
        self.pid = 100
        self.returncode: int | None = None
        self.starts = 0

    def running(self) -> bool:
        return self.returncode is None

    def start(self) -> "FakeProcess":
        self.starts += 1
        self.pid += 1
        self.returncode = None
        return self

    def exit(self, code: int) -> None:
        self.returncode = code


class Watched:
    """A supervisor over one fake child, and what it said."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.child = FakeProcess("api-1")
        self.said: list[str] = []
        self.supervisor = Supervisor([self.child], self.said.append, self.clock)

    def run_for(self, seconds: float) -> None:
        """The supervisor's loop for `seconds`: a check every CHECK_INTERVAL."""
        for _ in range(round(seconds / CHECK_INTERVAL)):
            self.clock.now += CHECK_INTERVAL
            self.supervisor.check()

    def crash(self, code: int = 1) -> float:
        """Make the child exit now; how long the supervisor waited before starting it again."""
        starts = self.child.starts
        self.child.exit(code)
        exited_at = self.clock.now
        self.supervisor.check()
        for _ in range(round(LONGEST_DELAY * 2 / CHECK_INTERVAL)):
            if self.child.starts > starts:
                return self.clock.now - exited_at
            self.run_for(CHECK_INTERVAL)
        pytest.fail(f"not restarted within {LONGEST_DELAY * 2}s; it said {self.said}")


def test_each_quick_crash_doubles_the_wait_up_to_the_cap() -> None:
    watched = Watched()
    waits = [watched.crash() for _ in range(8)]
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert waits[0] == FIRST_DELAY and waits[-1] == LONGEST_DELAY
    assert watched.child.starts == 8
    announced = [line for line in watched.said if "restarting it in" in line]
    assert [line.split("restarting it in ")[1].split("s ")[0] for line in announced] == [
        f"{wait:g}" for wait in waits
    ]


def test_a_child_that_ran_for_the_stable_period_is_restarted_after_the_first_wait() -> None:
    watched = Watched()
    assert [watched.crash() for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    watched.run_for(STABLE_SECONDS - CHECK_INTERVAL)
    assert watched.crash() == 16.0, "not stable yet: the wait goes on doubling"
    watched.run_for(STABLE_SECONDS)
    assert watched.crash() == FIRST_DELAY
    assert watched.crash() == FIRST_DELAY * 2


def test_the_supervisor_says_why_a_child_exited_and_its_new_pid() -> None:
    watched = Watched()
    watched.crash(-signal.SIGKILL)
    watched.crash(3)
    assert watched.said == [
        "devstack: api-1 exited (killed by SIGKILL); restarting it in 1s (log: /logs/api-1.log)",
        "devstack: api-1 restarted (pid 101)",
        "devstack: api-1 exited (exit code 3); restarting it in 2s (log: /logs/api-1.log)",
        "devstack: api-1 restarted (pid 102)",
    ]


def test_a_running_child_is_left_alone() -> None:
    watched = Watched()
    watched.run_for(STABLE_SECONDS * 3)
    assert watched.child.starts == 0
    assert watched.said == []
