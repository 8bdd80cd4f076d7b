"""Per-user limits held in MongoDB, so they hold however many API instances a user alternates
between. Their documents expire by TTL index: a user who stops, or an instance that dies,
leaves nothing behind for long.
"""

import asyncio
import contextlib
import math
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.settings import Settings
from shared.store.database import Database
from shared.store.documents import UNFINISHED_VALUES, messages_of

RATE_WINDOW = timedelta(minutes=1)
SOCKET_HEARTBEAT_SECONDS = 30.0
RACE_RETRIES = 3
NO_LIMIT = 0
"""A limit of 0 is none: nothing is counted, nothing is written."""


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request the rate limiter let through; `hit` identifies it for a refund."""

    owner: str
    hit: str | None


class RateLimited(Exception):
    """Over the rate: try again after `retry_after` whole seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"rate limit reached; retry after {retry_after} s")
        self.retry_after = retry_after


class RateLimiter:
    """At most `per_minute` admissions per user in any rolling minute.

    One document per user holds the times of its admissions within the last minute. Admitting
    is one conditional update: push a hit only while fewer than `per_minute` are held, so two
    instances admitting at once can never together go over.
    """

    def __init__(self, database: Database, per_minute: int) -> None:
        self.collection = database["rate_limits"]
        self.per_minute = per_minute

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("expiresAt", expireAfterSeconds=0)

    async def admit(self, owner: str) -> Admitted:
        """Count one request of `owner`; raises RateLimited when the minute is full."""
        if self.per_minute == NO_LIMIT:
            return Admitted(owner, None)
        hit = secrets.token_hex(8)
        for _ in range(RACE_RETRIES):
            at = now()
            await self.collection.update_one(
                {"_id": owner}, {"$pull": {"hits": {"at": {"$lte": at - RATE_WINDOW}}}}
            )
            try:
                await self.collection.update_one(
                    {"_id": owner, f"hits.{self.per_minute - 1}": {"$exists": False}},
                    {
                        "$push": {"hits": {"at": at, "id": hit}},
                        "$set": {"expiresAt": at + RATE_WINDOW},
                    },
                    upsert=True,
                )
                return Admitted(owner, hit)
            except DuplicateKeyError:
                # Full, or another instance created the user's document at the same moment.
                held = await self.collection.find_one({"_id": owner})
                hits = [] if held is None else [item["at"] for item in held.get("hits", [])]
                recent = sorted(when for when in hits if when > at - RATE_WINDOW)
                if len(recent) >= self.per_minute:
                    frees_at = recent[len(recent) - self.per_minute] + RATE_WINDOW
                    raise RateLimited(max(1, math.ceil((frees_at - at).total_seconds()))) from None
        raise RateLimited(1)

    async def refund(self, admitted: Admitted) -> None:
        """Give back an admission whose request was refused after all (it stored nothing)."""
        if admitted.hit is None:
            return
        await self.collection.update_one(
            {"_id": admitted.owner}, {"$pull": {"hits": {"id": admitted.hit}}}
        )


class TooManySockets(Exception):
    """The user already has the most WebSockets open that the limit allows."""


class SocketRegistry:
    """Each open WebSocket is a document whose lease this instance renews while it is open.

    Opening inserts first, then counts: of two sockets opened at once over the limit, both
    see each other and both are refused, so the limit never gives. An instance that dies
    stops renewing; its sockets stop counting one lease later and the TTL index removes them.
    """

    def __init__(
        self,
        database: Database,
        limit: int,
        heartbeat_seconds: float = SOCKET_HEARTBEAT_SECONDS,
    ) -> None:
        self.collection = database["websockets"]
        self.limit = limit
        self.heartbeat_seconds = heartbeat_seconds
        self.lease = timedelta(seconds=3 * heartbeat_seconds)
        self.open_here: set[str] = set()

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("expiresAt", expireAfterSeconds=0)
        await self.collection.create_index("owner")

    @contextlib.asynccontextmanager
    async def holding(self, owner: str) -> AsyncIterator[None]:
        """Hold one of `owner`'s places for the body; raises TooManySockets when none is free."""
        if self.limit == NO_LIMIT:
            yield
            return
        place = await self._open(owner)
        try:
            yield
        finally:
            self.open_here.discard(place)
            with contextlib.suppress(PyMongoError):  # MongoDB away: the lease runs out instead
                await self.collection.delete_one({"_id": place})

    async def renew_forever(self) -> None:
        """Keep the leases of this instance's sockets alive (run it as a background task)."""
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            if self.open_here:
                with contextlib.suppress(Exception):  # MongoDB away: retried next beat
                    await self.collection.update_many(
                        {"_id": {"$in": list(self.open_here)}},
                        {"$set": {"expiresAt": now() + self.lease}},
                    )

    async def _open(self, owner: str) -> str:
        place = secrets.token_hex(12)
        at = now()
        await self.collection.insert_one(
            {"_id": place, "owner": owner, "expiresAt": at + self.lease}
        )
        live = {"owner": owner, "expiresAt": {"$gt": at}}
        if await self.collection.count_documents(live) > self.limit:
            await self.collection.delete_one({"_id": place})
            raise TooManySockets(f"more than {self.limit} WebSockets open")
        self.open_here.add(place)
        return place


ACTIVE_REPLIES_RETRY_AFTER_SECONDS = 5
"""Retry-After of a refusal for MAX_ACTIVE_REPLIES: when a reply will end cannot be told, so a
few seconds, a polite interval at which to try again."""


class TooManyActiveReplies(Exception):
    """The user already has the most replies `created` or `streaming` that the limit allows."""

    retry_after = ACTIVE_REPLIES_RETRY_AFTER_SECONDS


class ActiveReplies:
    """At most `limit` of a user's replies unfinished at once, counted in the messages."""

    def __init__(self, database: Database, limit: int) -> None:
        self.messages = messages_of(database)
        self.limit = limit

    async def ensure_indexes(self) -> None:
        await self.messages.create_index([("owner", ASCENDING), ("status", ASCENDING)])

    async def check(self, owner: str, adding: int = 1) -> None:
        """Raise TooManyActiveReplies if `adding` more replies would go over the limit."""
        if self.limit == NO_LIMIT:
            return
        unfinished = {"owner": owner, "from": "assistant", "status": {"$in": UNFINISHED_VALUES}}
        if await self.messages.count_documents(unfinished, limit=self.limit) + adding > self.limit:
            raise TooManyActiveReplies(f"{self.limit} replies are still being written")


class Limits:
    """Every per-user limit of the contract, on one database shared by all API instances."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self.rate = RateLimiter(database, settings.rate_limit_per_minute)
        self.replies = ActiveReplies(database, settings.max_active_replies)
        self.sockets = SocketRegistry(database, settings.max_websockets)

    async def ensure_indexes(self) -> None:
        await self.rate.ensure_indexes()
        await self.replies.ensure_indexes()
        await self.sockets.ensure_indexes()

    @contextlib.asynccontextmanager
    async def new_reply(self, owner: str) -> AsyncIterator[None]:
        """Admit one new reply of `owner` (rate, then active replies) for the body to store.

        Raises RateLimited or TooManyActiveReplies. If anything refuses the request after
        admission (its body raises), the admission is given back: a refused request counts
        for nothing.
        """
        admitted = await self.rate.admit(owner)
        try:
            await self.replies.check(owner)
            yield
        except BaseException:
            with contextlib.suppress(PyMongoError):
                await self.rate.refund(admitted)
            raise
