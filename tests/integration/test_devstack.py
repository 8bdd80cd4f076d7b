"""`scripts/dev` (python -m devstack) as a developer runs it: it notices a child that dies."""

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from devstack.processes import ROOT, child_env, free_port, http_ok, python_module, wait_for
from devstack.supervise import FIRST_DELAY
from tests.infra import Broker, service_env

START_TIMEOUT = 60.0
RESTART_TIMEOUT = FIRST_DELAY + 30.0


class DevStack:
    """The devstack process, its output read line by line as a terminal would show it."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.popen = subprocess.Popen(
            python_module("devstack", "--logs", str(log_dir)),
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def child(self, module: str) -> psutil.Process:
        """The child running `python -m module`."""
        for child in psutil.Process(self.popen.pid).children():
            with contextlib.suppress(psutil.Error):
                if module in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE:
                    return child
        raise AssertionError(f"no {module} child; devstack said: {self.lines}")

    def zombies(self) -> list[int]:
        return [
            child.pid
            for child in psutil.Process(self.popen.pid).children()
            if child.status() == psutil.STATUS_ZOMBIE
        ]

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(60)
        finally:
            if self.popen.poll() is None:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def devstack(
    mongodb_url: str, broker: Broker, model_url: str, tmp_path: Path
) -> Iterator[tuple[DevStack, str]]:
    port = free_port()
    env = child_env(**service_env(mongodb_url, broker, model_url), API_PORT=str(port))
    running = DevStack(env, tmp_path)
    try:
        wait_for(lambda: running.said("Ready."), START_TIMEOUT, "devstack to be ready")
        yield running, f"http://127.0.0.1:{port}"
    finally:
        running.stop()


def test_ready_names_the_chat_page_and_it_opens_there(devstack: tuple[DevStack, str]) -> None:
    stack, url = devstack
    (ready,) = [line for line in stack.lines if line.startswith("Ready.")]
    page = ready.removeprefix("Ready. Chat page: ").split()[0]
    assert page == f"{url}/"
    response = httpx.get(page, timeout=10.0)
    assert response.status_code == 200
    assert '<script type="module" src="/static/js/main.js">' in response.text


def test_a_killed_api_is_reported_and_restarted_on_its_port(
    devstack: tuple[DevStack, str],
) -> None:
    stack, url = devstack
    api = stack.child("services.api")
    os.kill(api.pid, signal.SIGKILL)
    wait_for(lambda: stack.said("api exited (killed by SIGKILL)"), 10, "devstack to say so")
    wait_for(lambda: stack.said("api restarted"), RESTART_TIMEOUT, "devstack to restart it")
    wait_for(lambda: http_ok(f"{url}/readyz"), START_TIMEOUT, "the API to serve again")
    assert stack.child("services.api").pid != api.pid
    assert not stack.zombies(), "a dead child was left defunct"


def test_stopping_devstack_stops_every_child(devstack: tuple[DevStack, str]) -> None:
    stack, _ = devstack
    children = psutil.Process(stack.popen.pid).children()
    assert children
    assert stack.stop() == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"still running after devstack stopped: {alive}"
