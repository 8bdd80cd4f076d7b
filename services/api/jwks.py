"""The identity provider's public keys (a JWKS document), cached, refetched when they rotate.

A token signed with a key id we do not know makes us fetch the document again at once (the
provider has rotated its keys), but at most once per `REFETCH_INTERVAL_SECONDS`, so tokens
with made-up key ids cannot turn the API into a flood of requests to the provider.

A fetch that fails is not tried again for `RETRY_AFTER_FAILURE_SECONDS`: meanwhile requests
use the keys fetched before (or are answered 503 at once if there are none), instead of each
waiting up to `FETCH_TIMEOUT_SECONDS` for a provider that is away.
"""

import asyncio
import logging
import time
from collections.abc import Callable

import httpx2
import jwt

log = logging.getLogger(__name__)

ALGORITHMS = frozenset({"RS256", "ES256"})
REFETCH_INTERVAL_SECONDS = 10.0
FETCH_TIMEOUT_SECONDS = 5.0
RETRY_AFTER_FAILURE_SECONDS = 5.0


class KeysUnavailable(Exception):
    """The JWKS document could not be fetched or read, and no earlier copy is at hand."""


class UnknownKey(Exception):
    """The token names a key the provider does not publish (or names none among several)."""


class KeySet:
    def __init__(
        self,
        url: str,
        cache_seconds: float,
        refetch_interval: float = REFETCH_INTERVAL_SECONDS,
        client: httpx2.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.refetch_interval = refetch_interval
        self.clock = clock
        self.client = client or httpx2.AsyncClient(timeout=FETCH_TIMEOUT_SECONDS)
        self.keys: dict[str | None, jwt.PyJWK] = {}
        self.fetched_at: float | None = None
        self.refetched_at = -refetch_interval
        self.next_attempt = -RETRY_AFTER_FAILURE_SECONDS
        """No fetch before this time (on `clock`): the last one failed."""
        self.lock = asyncio.Lock()

    async def key(self, key_id: str | None) -> jwt.PyJWK:
        """The key that signed a token, by the `kid` of its header."""
        if self.fetched_at is None or self.clock() - self.fetched_at > self.cache_seconds:
            await self._refresh(self.fetched_at)
        found = self._lookup(key_id)
        if found is None and self.clock() - self.refetched_at >= self.refetch_interval:
            self.refetched_at = self.clock()
            await self._refresh(self.fetched_at)
            found = self._lookup(key_id)
        if found is None:
            raise UnknownKey(key_id)
        return found

    async def close(self) -> None:
        await self.client.aclose()

    def _lookup(self, key_id: str | None) -> jwt.PyJWK | None:
        if key_id is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return self.keys.get(key_id)

    async def _refresh(self, seen: float | None) -> None:
        """Fetch the document, once for all the callers that found the same copy too old, and
        not again for RETRY_AFTER_FAILURE_SECONDS if that fetch failed."""
        async with self.lock:
            if self.fetched_at != seen:
                return
            if self.clock() < self.next_attempt:
                if not self.keys:
                    raise KeysUnavailable("AUTH_JWKS_URL failed just now; not asked again yet")
                return
            try:
                self.keys = await self._fetch()
            except KeysUnavailable:
                self.next_attempt = self.clock() + RETRY_AFTER_FAILURE_SECONDS
                if not self.keys:
                    raise
                log.warning("could not refresh AUTH_JWKS_URL; keeping the keys fetched before")
                return
            self.fetched_at = self.clock()

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        try:
            response = await self.client.get(self.url)
            response.raise_for_status()
            document = response.json()
        except (httpx2.HTTPError, ValueError) as error:
            raise KeysUnavailable(f"cannot fetch AUTH_JWKS_URL ({type(error).__name__})") from error
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise KeysUnavailable("AUTH_JWKS_URL did not return a JWKS document")
        keys: dict[str | None, jwt.PyJWK] = {}
        for entry in document["keys"]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK(entry)
            except jwt.PyJWTError:
                continue  # a key type or curve we do not accept; others may still serve
            if key.algorithm_name in ALGORITHMS:
                keys[key.key_id] = key
        if not keys:
            raise KeysUnavailable("AUTH_JWKS_URL has no RS256 or ES256 signing key")
        return keys
