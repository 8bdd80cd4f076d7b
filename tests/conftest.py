"""Suite-wide safety net: no child process outlives the test session."""

import contextlib

import psutil
import pytest

pytest_plugins = ("tests.browser",)

STOP_TIMEOUT = 10.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fixtures stop what they start; this ends, by pid, any child a failed start left behind."""
    leftovers = psutil.Process().children(recursive=True)
    for child in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=STOP_TIMEOUT)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    if leftovers:
        names = ", ".join(f"{child.pid}" for child in leftovers)
        print(f"\nwarning: stopped {len(leftovers)} leftover child process(es): {names}")
