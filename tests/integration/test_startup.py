"""Start-up with a dependency missing: one line on stderr naming the variable, no traceback."""

import subprocess
from pathlib import Path

import pytest

from devstack.processes import ROOT, child_env, free_port, python_module
from tests.infra import Broker, service_env

STARTUP_TIMEOUT = "2"
EXIT_DEADLINE = 30.0  # generous: the process must exit by itself, not be killed by the test
MODEL_VARIABLES = ("OPENAI_API_KEY", "OPENAI_BASE_URL")


def _start(
    module: str, env: dict[str, str], unset: tuple[str, ...] = (), args: tuple[str, ...] = ()
) -> tuple[int, str]:
    """Run a service to its exit; returns its exit code and stderr."""
    environment = child_env(**env, STARTUP_TIMEOUT_SECONDS=STARTUP_TIMEOUT)
    for name in unset:
        environment.pop(name, None)
    completed = subprocess.run(
        python_module(module, *args),
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=EXIT_DEADLINE,
        check=False,
    )
    return completed.returncode, completed.stderr


def _assert_one_line_naming(variable: str, code: int, stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert code != 0
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert variable in lines[0]
    assert "Traceback" not in stderr


@pytest.fixture
def env(mongodb_url: str, broker: Broker, model_url: str) -> dict[str, str]:
    """A working configuration, each test breaks one part of it."""
    return service_env(mongodb_url, broker, model_url)


def _closed_port() -> int:
    return free_port()  # bound and released: nothing listens there


@pytest.mark.parametrize("module", ["services.api", "services.responder"])
def test_unreachable_mongodb_is_named(module: str, env: dict[str, str]) -> None:
    env["MONGODB_URL"] = f"mongodb://127.0.0.1:{_closed_port()}/?directConnection=true"
    _assert_one_line_naming("MONGODB_URL", *_start(module, env))


@pytest.mark.parametrize("module", ["services.api", "services.responder"])
def test_unreachable_rabbitmq_is_named_without_its_password(
    module: str, env: dict[str, str]
) -> None:
    env["RABBITMQ_URL"] = f"amqp://guest:s3cret-pw@127.0.0.1:{_closed_port()}/"
    code, stderr = _start(module, env)
    _assert_one_line_naming("RABBITMQ_URL", code, stderr)
    assert "s3cret-pw" not in stderr


def test_responder_without_a_model_names_openai_api_key(env: dict[str, str]) -> None:
    for name in MODEL_VARIABLES:
        env.pop(name)
    _assert_one_line_naming("OPENAI_API_KEY", *_start("services.responder", env, MODEL_VARIABLES))


def test_responder_with_an_unreachable_model_names_openai_base_url(env: dict[str, str]) -> None:
    env["OPENAI_BASE_URL"] = f"http://127.0.0.1:{_closed_port()}/v1"
    _assert_one_line_naming("OPENAI_BASE_URL", *_start("services.responder", env))


@pytest.mark.parametrize("module", ["services.api", "services.responder"])
def test_malformed_mongodb_url_is_named(module: str, env: dict[str, str]) -> None:
    env["MONGODB_URL"] = "mongo://127.0.0.1"  # a typo in the scheme
    _assert_one_line_naming("MONGODB_URL", *_start(module, env))


def test_malformed_rabbitmq_url_is_named(env: dict[str, str]) -> None:
    env["RABBITMQ_URL"] = "localhost:5672"  # the scheme forgotten
    _assert_one_line_naming("RABBITMQ_URL", *_start("services.api", env))


MALFORMED = {
    "MONGODB_URL": "mongodb://guest:s3cret-pw@[::1:1/",
    "RABBITMQ_URL": "amqp://guest:s3cret-pw@[::1:1/",
}


@pytest.mark.parametrize("module", ["services.api", "services.responder", "devstack"])
@pytest.mark.parametrize("variable", MALFORMED)
def test_url_that_cannot_be_parsed_is_named_without_its_password(
    module: str, variable: str, env: dict[str, str], tmp_path: Path
) -> None:
    """An unclosed IPv6 bracket: one line naming the variable, not a traceback of the parser."""
    env[variable] = MALFORMED[variable]
    code, stderr = _start(
        module, env, args=("--logs", str(tmp_path)) if module == "devstack" else ()
    )
    _assert_one_line_naming(variable, code, stderr)
    assert "s3cret-pw" not in stderr
