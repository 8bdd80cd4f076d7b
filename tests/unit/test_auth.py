"""Bearer JWT verification: what is accepted, and the reason named for what is not."""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any

import httpx
import httpx2
import jwt
import pytest
from fastapi import Depends, FastAPI

from services.api.auth import (
    OPEN_USER,
    AuthUnavailable,
    BearerUser,
    OpenAccess,
    TokenRejected,
    TokenVerifier,
    token_rejected,
    verifier_from,
    warn_if_open,
)
from services.api.jwks import RETRY_AFTER_FAILURE_SECONDS, KeySet
from shared.settings import Settings
from shared.startup import ConfigurationInvalid
from tests.tokens import TEST_SECRET, KeyServer, SigningKey, hs256

LEEWAY = 30.0
CACHE_SECONDS = 300.0


def secret_verifier(issuer: str | None = None, audience: str | None = None) -> TokenVerifier:
    return TokenVerifier(TEST_SECRET, issuer, audience, LEEWAY)


async def rejection(verifier: TokenVerifier, token: str | None) -> str:
    with pytest.raises(TokenRejected) as refused:
        await verifier.verify(token)
    assert TEST_SECRET not in refused.value.description
    return refused.value.error


async def test_a_valid_token_names_its_user_and_expiry() -> None:
    identity = await secret_verifier().verify(hs256("alice", ttl=60))
    assert identity.user == "alice"
    assert identity.expires_at is not None
    assert 60 + LEEWAY - 5 < identity.expires_at - time.time() <= 60 + LEEWAY


# Tokens are made when the test runs, not when it is collected: in a suite that runs longer than
# a token's lifetime every one of them would be refused as expired.
REFUSED_TOKENS: dict[str, tuple[Callable[[], str | None], str]] = {
    "none": (lambda: None, "missing_token"),
    "empty": (lambda: "", "missing_token"),
    "not a jwt": (lambda: "not-a-jwt", "malformed_token"),
    "three parts": (lambda: "a.b.c", "malformed_token"),
    "other secret": (
        lambda: hs256(secret="another-secret-of-enough-length-0123456789"),
        "bad_signature",
    ),
    "expired": (lambda: hs256(ttl=-LEEWAY - 60), "expired_token"),
    "not yet valid": (lambda: hs256(nbf=int(time.time()) + 3600), "token_not_yet_valid"),
    "no exp": (lambda: hs256(exp=None), "missing_claim"),
    "no sub": (lambda: hs256(sub=None), "missing_claim"),
    "long sub": (lambda: hs256(sub="x" * 201), "invalid_subject"),
    "open mode's user": (lambda: hs256(sub=OPEN_USER), "invalid_subject"),
    "alg none": (
        lambda: jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, "", "none"),
        "wrong_algorithm",
    ),
    "alg es256": (lambda: SigningKey.ec("k1").token(), "wrong_algorithm"),
}


@pytest.mark.parametrize("case", REFUSED_TOKENS.keys())
async def test_refused_tokens_name_what_is_wrong(case: str) -> None:
    token, error = REFUSED_TOKENS[case]
    assert await rejection(secret_verifier(), token()) == error


async def test_a_token_expired_by_less_than_the_leeway_passes() -> None:
    assert (await secret_verifier().verify(hs256(ttl=-LEEWAY / 2))).user == "alice"


async def test_a_forged_expired_token_is_a_bad_signature_not_an_expiry() -> None:
    forged = hs256(secret="another-secret-of-enough-length-0123456789", ttl=-3600)
    assert await rejection(secret_verifier(), forged) == "bad_signature"


async def test_audience_and_issuer_are_checked_when_configured() -> None:
    verifier = secret_verifier(issuer="https://id.example", audience="chat-api")
    good = hs256(iss="https://id.example", aud="chat-api")
    assert (await verifier.verify(good)).user == "alice"
    assert await rejection(verifier, hs256(iss="https://id.example", aud="other")) == (
        "wrong_audience"
    )
    assert await rejection(verifier, hs256(iss="https://evil.example", aud="chat-api")) == (
        "wrong_issuer"
    )
    assert await rejection(verifier, hs256(iss="https://id.example")) == "missing_claim"


async def test_an_audience_in_the_token_is_ignored_when_none_is_configured() -> None:
    assert (await secret_verifier().verify(hs256(aud="anything"))).user == "alice"


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer([SigningKey.rsa("rsa-1"), SigningKey.ec("ec-1")])
    with server.running():
        yield server


@pytest.fixture
async def jwks_verifier(key_server: KeyServer) -> AsyncIterator[TokenVerifier]:
    """On a clock that stands still: a slow machine's key generation between two requests
    does not pass for the refetch interval."""
    key_set = KeySet(key_server.url, cache_seconds=300, clock=Clock())
    verifier = TokenVerifier(key_set, None, "chat-api", LEEWAY)
    try:
        yield verifier
    finally:
        await verifier.close()


async def test_jwks_tokens_of_either_algorithm_are_accepted(
    key_server: KeyServer, jwks_verifier: TokenVerifier
) -> None:
    for key in key_server.keys:
        assert (await jwks_verifier.verify(key.token("bob", aud="chat-api"))).user == "bob"
    assert key_server.fetches == 1, "the key set is cached"


async def test_jwks_refuses_what_its_keys_did_not_sign(
    key_server: KeyServer, jwks_verifier: TokenVerifier
) -> None:
    impostor = SigningKey.rsa("rsa-1")  # same kid, another private key
    assert await rejection(jwks_verifier, impostor.token(aud="chat-api")) == "bad_signature"
    assert await rejection(jwks_verifier, hs256(aud="chat-api")) == "unknown_key"
    assert await rejection(jwks_verifier, key_server.keys[0].token(aud="x")) == "wrong_audience"
    assert await rejection(jwks_verifier, key_server.keys[0].token(aud="chat-api", ttl=-99)) == (
        "expired_token"
    )


async def test_a_rotated_key_is_fetched_once_and_unknown_kids_are_rate_limited(
    key_server: KeyServer, jwks_verifier: TokenVerifier
) -> None:
    old = key_server.keys[0]
    assert (await jwks_verifier.verify(old.token(aud="chat-api"))).user == "alice"
    rotated = SigningKey.rsa("rsa-2")
    key_server.keys = [rotated]
    assert (await jwks_verifier.verify(rotated.token(aud="chat-api"))).user == "alice"
    assert key_server.fetches == 2, "an unknown kid refetches the key set once"
    stranger = SigningKey.rsa("never-published")
    for _ in range(5):
        assert await rejection(jwks_verifier, stranger.token(aud="chat-api")) == "unknown_key"
    assert key_server.fetches == 2, "made-up kids do not make the API hammer the provider"


class Clock:
    """A monotonic clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountedKeySet(KeySet):
    """A KeySet on a hand-moved clock that counts its attempts to fetch, answered or not."""

    def __init__(self, url: str, cache_seconds: float = CACHE_SECONDS) -> None:
        self.attempts = 0

        async def count(request: httpx2.Request) -> None:
            self.attempts += 1

        client = httpx2.AsyncClient(timeout=5.0, event_hooks={"request": [count]})
        super().__init__(url, cache_seconds, client=client, clock=Clock())

    def advance(self, seconds: float) -> None:
        assert isinstance(self.clock, Clock)
        self.clock.now += seconds


def stop(server: KeyServer) -> None:
    """The provider goes away: its port refuses connections."""
    server.http.shutdown()
    server.http.server_close()


async def test_jwks_keeps_its_keys_when_the_provider_goes_away(key_server: KeyServer) -> None:
    keys = CountedKeySet(key_server.url)
    verifier = TokenVerifier(keys, None, None, LEEWAY)
    try:
        assert (await verifier.verify(key_server.keys[0].token())).user == "alice"
        stop(key_server)
        keys.advance(CACHE_SECONDS + 1)  # the copy is stale: the next use refetches
        assert (await verifier.verify(key_server.keys[1].token())).user == "alice"
        assert keys.attempts == 2, "a refetch was tried, failed, and the old keys served"
    finally:
        await verifier.close()


async def test_a_failed_refresh_is_not_retried_by_every_request(key_server: KeyServer) -> None:
    """With the provider away, one request in RETRY_AFTER_FAILURE_SECONDS tries it, not all."""
    keys = CountedKeySet(key_server.url)
    verifier = TokenVerifier(keys, None, None, LEEWAY)
    token = key_server.keys[0].token()
    try:
        await verifier.verify(token)
        stop(key_server)
        keys.advance(CACHE_SECONDS + 1)
        for _ in range(3):
            assert (await verifier.verify(token)).user == "alice"
        await asyncio.gather(*(verifier.verify(token) for _ in range(5)))
        assert keys.attempts == 2, "one failed refetch, then the keys fetched before"
        keys.advance(RETRY_AFTER_FAILURE_SECONDS - 0.1)
        await verifier.verify(token)
        assert keys.attempts == 2, "still backing off"
        keys.advance(0.1)
        assert (await verifier.verify(token)).user == "alice"
        assert keys.attempts == 3, "tried again once the back-off is over"
    finally:
        await verifier.close()


async def test_an_unreachable_provider_is_unavailable_not_unauthorised() -> None:
    """No keys at all: a 503 for every request, but the provider is asked once per back-off."""
    keys = CountedKeySet("http://127.0.0.1:9/jwks")
    verifier = TokenVerifier(keys, None, None, LEEWAY)
    token = SigningKey.rsa("k").token()
    try:
        for _ in range(3):
            with pytest.raises(AuthUnavailable):
                await verifier.verify(token)
        assert keys.attempts == 1
        keys.advance(RETRY_AFTER_FAILURE_SECONDS)
        with pytest.raises(AuthUnavailable):
            await verifier.verify(token)
        assert keys.attempts == 2
    finally:
        await verifier.close()


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_open_mode_is_announced_loudly(caplog: pytest.LogCaptureFixture) -> None:
    verifier = verifier_from(settings())
    assert isinstance(verifier, OpenAccess)
    with caplog.at_level(logging.WARNING):
        warn_if_open(verifier)
    assert "AUTHENTICATION IS OFF" in caplog.text


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"auth_jwt_secret": "short"}, "AUTH_JWT_SECRET"),
        ({"auth_jwt_secret": TEST_SECRET, "auth_jwks_url": "http://x/jwks"}, "AUTH_JWKS_URL"),
    ],
)
def test_unusable_settings_name_the_variable(values: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigurationInvalid, match=variable) as refused:
        verifier_from(settings(**values))
    assert "short" not in str(refused.value)


async def test_open_mode_users_are_local() -> None:
    assert (await OpenAccess().verify(None)).user == OPEN_USER


def app_with(verifier: Any) -> FastAPI:
    app = FastAPI()
    app.state.verifier = verifier
    app.add_exception_handler(TokenRejected, token_rejected)

    @app.get("/whoami")
    async def whoami(user: Annotated[str, Depends(BearerUser())]) -> dict[str, str]:
        return {"user": user}

    return app


async def get(app: FastAPI, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/whoami", headers=headers)


@pytest.mark.parametrize(
    ("authorization", "error"),
    [
        (lambda: None, "missing_token"),
        (lambda: "Basic YWxpY2U6c2VjcmV0", "malformed_token"),
        (lambda: "Bearer", "malformed_token"),
        (lambda: f"Bearer {hs256(ttl=-3600)}", "expired_token"),
    ],
    ids=["none", "basic", "bare", "expired"],
)
async def test_the_dependency_answers_401_with_a_bearer_challenge(
    authorization: Callable[[], str | None], error: str
) -> None:
    value = authorization()
    headers = {} if value is None else {"authorization": value}
    response = await get(app_with(secret_verifier()), headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith('Bearer realm="chat"')
    assert response.json()["error"] == error
    assert response.json()["detail"]


async def test_the_dependency_gives_the_tokens_user() -> None:
    response = await get(app_with(secret_verifier()), {"authorization": f"Bearer {hs256('bo')}"})
    assert response.status_code == 200
    assert response.json() == {"user": "bo"}


async def test_open_mode_ignores_whatever_token_is_sent() -> None:
    response = await get(app_with(OpenAccess()), {"authorization": "Bearer garbage"})
    assert response.json() == {"user": OPEN_USER}


def test_the_openapi_declares_bearer_auth() -> None:
    schema = app_with(OpenAccess()).openapi()
    assert schema["components"]["securitySchemes"]["BearerUser"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT whose `sub` is the user; not needed when the API runs open.",
    }
