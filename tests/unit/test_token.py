"""The development token command: what it prints passes the API's own verifier."""

import argparse
import os
import subprocess
import sys

import pytest
from pydantic import SecretStr

from services.api.auth import TokenVerifier
from services.api.token import duration, mint
from shared.settings import Settings
from tests.tokens import TEST_SECRET


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1w", "h", "1.5h"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


async def test_a_minted_token_carries_the_configured_issuer_and_audience() -> None:
    settings = Settings(
        _env_file=None,
        auth_jwt_secret=SecretStr(TEST_SECRET),
        auth_issuer="dev",
        auth_audience="chat",
    )
    token = mint(settings, "alice", 120)
    identity = await TokenVerifier(TEST_SECRET, "dev", "chat", 0).verify(token)
    assert identity.user == "alice"


def run(*args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTH_")}
    if secret is not None:
        env["AUTH_JWT_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "services.api.token", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",  # no .env of a checkout in the way
    )


async def test_the_command_prints_a_token_and_the_page_address() -> None:
    done = run(
        "--sub", "bob", "--ttl", "5m", "--page", "http://127.0.0.1:8000/", secret=TEST_SECRET
    )
    assert done.returncode == 0, done.stderr
    token, page = done.stdout.splitlines()
    assert (await TokenVerifier(TEST_SECRET, None, None, 0).verify(token)).user == "bob"
    assert page == f"http://127.0.0.1:8000/#token={token}"


def test_the_command_without_a_secret_says_which_variable() -> None:
    done = run("--sub", "bob", secret=None)
    assert done.returncode == 2
    assert "AUTH_JWT_SECRET is not set" in done.stderr
    assert done.stdout == ""
