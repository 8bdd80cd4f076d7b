"""Tokens for tests: HS256 from a secret, RS256/ES256 from keys served as JWKS on loopback."""

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

TEST_SECRET = "test-secret-for-the-suite-only-0123456789"
ISSUER = "https://id.chat.test"
AUDIENCE = "chat-api"
RATE_LIMIT = 5
ACTIVE_REPLIES = 2
WEBSOCKETS = 3
BODY_LIMIT = 262144
ALLOWED_ORIGIN = "https://app.chat.test"
AUTH_ENV = {
    "AUTH_JWT_SECRET": TEST_SECRET,
    "AUTH_ISSUER": ISSUER,
    "AUTH_AUDIENCE": AUDIENCE,
    "RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT),
    "MAX_ACTIVE_REPLIES": str(ACTIVE_REPLIES),
    "MAX_WEBSOCKETS": str(WEBSOCKETS),
    "MAX_BODY_BYTES": str(BODY_LIMIT),
    "CORS_ORIGINS": ALLOWED_ORIGIN,
    "AUTH_LEEWAY_SECONDS": "1",
}
"""The authenticated test stack's settings (tests/integration/conftest.py `auth_stack`)."""


def hs256(
    sub: str | None = "alice", secret: str = TEST_SECRET, ttl: float = 300, **claims: Any
) -> str:
    issued = time.time()
    payload = {"sub": sub, "iat": int(issued), "exp": int(issued + ttl), **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, "HS256")


def user_token(sub: str, ttl: float = 300, **claims: Any) -> str:
    """A token the authenticated test stack accepts for `sub`."""
    return hs256(sub, ttl=ttl, **{"iss": ISSUER, "aud": AUDIENCE, **claims})


def new_user() -> str:
    """A fresh user per test: every limit is per user, so tests never share one."""
    return f"user-{uuid.uuid4().hex[:12]}"


@dataclass
class SigningKey:
    """A private key with the public half as a JWK, under a key id."""

    kid: str
    algorithm: str
    private: Any = field(repr=False)

    @classmethod
    def rsa(cls, kid: str) -> "SigningKey":
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> "SigningKey":
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        jwk = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def token(self, sub: str = "alice", ttl: float = 300, **claims: Any) -> str:
        issued = time.time()
        payload = {"sub": sub, "iat": int(issued), "exp": int(issued + ttl), **claims}
        return jwt.encode(payload, self.private, self.algorithm, headers={"kid": self.kid})


class KeyServer:
    """A JWKS document on 127.0.0.1 whose keys a test can rotate; counts its fetches."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.fetches = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.fetches += 1
                body = json.dumps({"keys": [key.public_jwk() for key in server.keys]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/.well-known/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator["KeyServer"]:
        thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.http.shutdown()
            self.http.server_close()
            thread.join()
