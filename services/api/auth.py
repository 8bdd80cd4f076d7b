"""Who is asking: a bearer JWT's `sub`, checked against AUTH_JWT_SECRET or AUTH_JWKS_URL.

With neither set the API runs open: everyone is the one user `local` (a laptop, never the
internet). With either set, no token may name `local` as its `sub`: that user owns whatever
was stored while the API ran open. A refused token is answered `401` with
`WWW-Authenticate: Bearer` and a JSON body that says what is wrong with the token, never
anything about the key that checked it.
"""

import logging
import time
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.requests import HTTPConnection

from services.api.jwks import KeySet, KeysUnavailable, UnknownKey
from shared.schemas import LOCAL_OWNER
from shared.settings import Settings
from shared.startup import ConfigurationInvalid

log = logging.getLogger(__name__)

OPEN_USER = LOCAL_OWNER
MIN_SECRET_LENGTH = 32
MAX_SUBJECT_LENGTH = 200
REALM = "chat"


@dataclass(frozen=True, slots=True)
class Identity:
    """The user a request acts for, and when its token stops being valid (None: never)."""

    user: str
    expires_at: float | None


class TokenRejected(Exception):
    """Why a token is refused, in words that are safe to show whoever sent it."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


class AuthErrorBody(BaseModel):
    """The body of every `401`: `error` is a stable code, `detail` says it in words."""

    detail: str
    error: str


class AuthUnavailable(Exception):
    """The identity provider's keys cannot be had right now: not the client's fault (503)."""


MISSING = TokenRejected("missing_token", "no bearer token: send Authorization: Bearer <token>")
NOT_BEARER = TokenRejected("malformed_token", "the Authorization header must be 'Bearer <token>'")


def _rejection(error: jwt.PyJWTError) -> TokenRejected:
    """Name what is wrong with the token; PyJWT checks the signature before any claim."""
    match error:
        case jwt.ExpiredSignatureError():
            return TokenRejected("expired_token", "the token has expired")
        case jwt.ImmatureSignatureError():
            return TokenRejected("token_not_yet_valid", "the token is not valid yet (nbf or iat)")
        case jwt.InvalidSignatureError():
            return TokenRejected("bad_signature", "the token's signature does not verify")
        case jwt.InvalidAudienceError():
            return TokenRejected("wrong_audience", "the token is not meant for this API (aud)")
        case jwt.InvalidIssuerError():
            return TokenRejected("wrong_issuer", "the token comes from another issuer (iss)")
        case jwt.MissingRequiredClaimError():
            return TokenRejected("missing_claim", f"the token has no '{error.claim}' claim")
        case jwt.InvalidAlgorithmError():
            return TokenRejected(
                "wrong_algorithm", "the token is signed with an algorithm not accepted here"
            )
        case _:
            return TokenRejected("malformed_token", "the bearer token is not a well-formed JWT")


class Verifier(Protocol):
    open: bool

    async def verify(self, token: str | None) -> Identity: ...

    async def close(self) -> None: ...


class OpenAccess:
    """No authentication configured: every caller is `local`."""

    open = True

    async def verify(self, token: str | None) -> Identity:
        return Identity(OPEN_USER, None)

    async def close(self) -> None:
        return None


class TokenVerifier:
    """Checks signature, `exp` (required), `nbf`, and `iss`/`aud` when configured."""

    open = False

    def __init__(
        self,
        keys: "str | KeySet",
        issuer: str | None,
        audience: str | None,
        leeway: float,
    ) -> None:
        self.keys = keys
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    async def verify(self, token: str | None) -> Identity:
        if not token:
            raise MISSING
        try:
            key, algorithms = await self._key_for(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWTError as error:
            raise _rejection(error) from None
        user = claims["sub"]
        if not isinstance(user, str) or not 1 <= len(user) <= MAX_SUBJECT_LENGTH:
            raise TokenRejected(
                "invalid_subject", f"the token's 'sub' must be 1 to {MAX_SUBJECT_LENGTH} characters"
            )
        if user == OPEN_USER:
            raise TokenRejected(
                "invalid_subject", f"the token's 'sub' may not be '{OPEN_USER}', the open user"
            )
        return Identity(user, float(claims["exp"]) + self.leeway)

    async def _key_for(self, token: str) -> tuple[Any, list[str]]:
        if isinstance(self.keys, str):
            return self.keys, ["HS256"]
        header = jwt.get_unverified_header(token)
        key_id = header.get("kid")
        if key_id is not None and not isinstance(key_id, str):
            raise jwt.DecodeError("kid is not a string")
        try:
            key = await self.keys.key(key_id)
        except UnknownKey:
            raise TokenRejected(
                "unknown_key", "the token's key id (kid) is not among the issuer's keys"
            ) from None
        except KeysUnavailable as error:
            raise AuthUnavailable(str(error)) from error
        return key, [key.algorithm_name]

    async def close(self) -> None:
        if isinstance(self.keys, KeySet):
            await self.keys.close()


def verifier_from(settings: Settings) -> Verifier:
    """The verifier the settings ask for; open mode says so loudly."""
    secret = settings.auth_jwt_secret.get_secret_value() if settings.auth_jwt_secret else None
    if secret is not None and settings.auth_jwks_url is not None:
        raise ConfigurationInvalid("set AUTH_JWT_SECRET or AUTH_JWKS_URL, not both")
    if secret is not None:
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationInvalid(
                f"AUTH_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters"
            )
        keys: str | KeySet = secret
    elif settings.auth_jwks_url is not None:
        keys = KeySet(settings.auth_jwks_url, settings.auth_jwks_cache_seconds)
    else:
        return OpenAccess()
    return TokenVerifier(
        keys, settings.auth_issuer, settings.auth_audience, settings.auth_leeway_seconds
    )


def warn_if_open(verifier: Verifier) -> None:
    """Say loudly, once the API is up, that anyone reaching it is the one user."""
    if verifier.open:
        log.warning(
            "AUTHENTICATION IS OFF: neither AUTH_JWT_SECRET nor AUTH_JWKS_URL is set, so anyone "
            "who reaches this API acts as the one user '%s'. Fine on a laptop; never expose it.",
            OPEN_USER,
        )


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of `Authorization: Bearer`, or of `access_token=` for a browser's WebSocket."""
    header = connection.headers.get("authorization")
    if header is None:
        if connection.scope["type"] == "websocket":
            return connection.query_params.get("access_token")
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise NOT_BEARER
    return token.strip()


def unauthorized(rejection: TokenRejected) -> JSONResponse:
    challenge = f'Bearer realm="{REALM}"'
    if rejection is not MISSING:
        challenge += f', error="invalid_token", error_description="{rejection.description}"'
    return JSONResponse(
        AuthErrorBody(detail=rejection.description, error=rejection.error).model_dump(),
        status_code=401,
        headers={"WWW-Authenticate": challenge},
    )


async def token_rejected(request: Request, error: Exception) -> JSONResponse:
    """Exception handler: a refused token becomes the `401` described above."""
    assert isinstance(error, TokenRejected)
    return unauthorized(error)


async def identify(connection: HTTPConnection) -> Identity:
    """The caller of a request or WebSocket, by the app's verifier; raises TokenRejected."""
    verifier: Verifier = connection.app.state.verifier
    if verifier.open:
        return await verifier.verify(None)
    return await verifier.verify(bearer_token(connection))


class BearerUser(HTTPBearer):
    """FastAPI dependency giving the user (`sub`), declared in the OpenAPI as bearer auth."""

    def __init__(self) -> None:
        super().__init__(
            bearerFormat="JWT",
            description="A JWT whose `sub` is the user; not needed when the API runs open.",
            auto_error=False,
        )

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        return (await identify(request)).user


def seconds_left(identity: Identity) -> float | None:
    """How long the token that identified a WebSocket stays valid (None: for ever)."""
    if identity.expires_at is None:
        return None
    return max(identity.expires_at - time.time(), 0.0)
