"""Users from an identity provider: RS256/ES256 keys from a JWKS document served on loopback,
fetched by the API process, cached, and refetched when the provider rotates its keys.
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import new_conversation_id, prompt
from tests.infra import Deployment, deployment, rabbitmq, service_env
from tests.tokens import KeyServer, SigningKey, new_user

AUDIENCE = "chat-jwks-test"


@pytest.fixture(scope="module")
def key_server() -> Iterator[KeyServer]:
    server = KeyServer([SigningKey.rsa("rsa-2026-01"), SigningKey.ec("ec-2026-01")])
    with server.running():
        yield server


@pytest.fixture(scope="module")
def jwks_stack(
    log_dir: Path, mongodb_url: str, model_url: str, key_server: KeyServer
) -> Iterator[Deployment]:
    with rabbitmq("chat-test-jwks") as own_broker:
        env = {
            **service_env(mongodb_url, own_broker, model_url),
            "AUTH_JWKS_URL": key_server.url,
            "AUTH_AUDIENCE": AUDIENCE,
        }
        with deployment("jwks", log_dir, env, own_broker, responders=1, apis=1) as running:
            yield running


@pytest.fixture
async def http(jwks_stack: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=jwks_stack.api_urls[0], timeout=10.0) as client:
        yield client


async def post_as(http: httpx.AsyncClient, token: str) -> httpx.Response:
    return await http.post(
        "/chat",
        json={"message": prompt("jwks", tokens=1), "conversationId": new_conversation_id()},
        headers={"authorization": f"Bearer {token}"},
    )


async def test_tokens_signed_with_either_published_key_are_accepted(
    http: httpx.AsyncClient, key_server: KeyServer
) -> None:
    for key in key_server.keys:
        response = await post_as(http, key.token(new_user(), aud=AUDIENCE))
        assert response.status_code == 202, f"{key.algorithm}: {response.text}"


async def test_refused_tokens_say_why(http: httpx.AsyncClient, key_server: KeyServer) -> None:
    published = key_server.keys[0]
    cases = {
        "wrong_audience": published.token(aud="another-api"),
        "expired_token": published.token(aud=AUDIENCE, ttl=-3600),
        "bad_signature": SigningKey.rsa(published.kid).token(aud=AUDIENCE),
    }
    for error, token in cases.items():
        response = await post_as(http, token)
        assert response.status_code == 401, error
        assert response.json()["error"] == error


async def test_a_rotated_key_is_picked_up_and_the_retired_one_refused(
    http: httpx.AsyncClient, key_server: KeyServer
) -> None:
    retired = key_server.keys[0]
    assert (await post_as(http, retired.token(aud=AUDIENCE))).status_code == 202
    rotated = SigningKey.rsa("rsa-2026-02")
    key_server.keys = [rotated, key_server.keys[1]]
    fetches = key_server.fetches
    response = await post_as(http, rotated.token(new_user(), aud=AUDIENCE))
    assert response.status_code == 202, response.text
    assert key_server.fetches == fetches + 1, "the unknown kid made the API refetch once"
    refused = await post_as(http, retired.token(aud=AUDIENCE))
    assert refused.status_code == 401
    assert refused.json()["error"] == "unknown_key"
    assert key_server.fetches == fetches + 1, "a second unknown kid at once does not refetch"
