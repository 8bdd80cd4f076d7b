"""Per-user limit state in MongoDB, shared by every API instance (here: two clients)."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pymongo import AsyncMongoClient

from services.api.limits import (
    NO_LIMIT,
    RATE_WINDOW,
    RateLimited,
    RateLimiter,
    SocketRegistry,
    TooManySockets,
    now,
)
from shared.store.database import Database, Document

PER_MINUTE = 5
SOCKETS = 3


@pytest.fixture
async def databases(mongodb_url: str) -> AsyncIterator[tuple[Database, Database]]:
    """The same database through two clients, as two API instances see it."""
    name = f"limits_{uuid.uuid4().hex[:8]}"
    first: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_url, tz_aware=True)
    second: AsyncMongoClient[Document] = AsyncMongoClient(mongodb_url, tz_aware=True)
    try:
        yield first[name], second[name]
    finally:
        await first.drop_database(name)
        await first.close()
        await second.close()


async def test_the_rate_holds_across_instances(
    databases: tuple[Database, Database],
) -> None:
    limiters = [RateLimiter(database, PER_MINUTE) for database in databases]
    await limiters[0].ensure_indexes()
    for index in range(PER_MINUTE):
        await limiters[index % 2].admit("alice")
    for limiter in limiters:
        with pytest.raises(RateLimited) as refused:
            await limiter.admit("alice")
        assert 55 <= refused.value.retry_after <= 60
    await limiters[1].admit("bob")  # another user's minute is their own


async def test_concurrent_requests_never_go_over(
    databases: tuple[Database, Database],
) -> None:
    limiters = [RateLimiter(database, PER_MINUTE) for database in databases]
    results = await asyncio.gather(
        *(limiters[index % 2].admit("carol") for index in range(4 * PER_MINUTE)),
        return_exceptions=True,
    )
    admitted = [result for result in results if not isinstance(result, BaseException)]
    refused = [result for result in results if isinstance(result, RateLimited)]
    assert len(admitted) == PER_MINUTE
    assert len(refused) == 3 * PER_MINUTE


async def test_the_minute_rolls_and_a_refund_frees_a_place(
    databases: tuple[Database, Database],
) -> None:
    database = databases[0]
    limiter = RateLimiter(database, PER_MINUTE)
    old = now() - RATE_WINDOW - timedelta(seconds=1)
    recent = now() - timedelta(seconds=50)
    hits = [{"at": old, "id": "old"}] * 2 + [{"at": recent, "id": f"r{i}"} for i in range(3)]
    await database["rate_limits"].insert_one({"_id": "dave", "hits": hits, "expiresAt": now()})
    first = await limiter.admit("dave")  # the two old hits no longer count
    await limiter.admit("dave")
    with pytest.raises(RateLimited) as refused:
        await limiter.admit("dave")
    assert refused.value.retry_after <= 11, "the oldest recent hit leaves the window in ~10 s"
    await limiter.refund(first)
    await limiter.admit("dave")


async def test_websockets_per_user_across_instances(
    databases: tuple[Database, Database],
) -> None:
    registries = [SocketRegistry(database, SOCKETS) for database in databases]
    await registries[0].ensure_indexes()
    async with (
        registries[0].holding("erin"),
        registries[1].holding("erin"),
        registries[0].holding("erin"),
    ):
        for registry in registries:
            with pytest.raises(TooManySockets):
                async with registry.holding("erin"):
                    pass
        async with registries[1].holding("frank"):
            pass
    async with registries[1].holding("erin"):
        pass
    assert await databases[0]["websockets"].count_documents({}) == 0


async def test_sockets_of_a_dead_instance_stop_counting_when_their_lease_ends(
    databases: tuple[Database, Database],
) -> None:
    database = databases[0]
    expired = [
        {"_id": f"dead-{i}", "owner": "gina", "expiresAt": now() - timedelta(seconds=1)}
        for i in range(SOCKETS)
    ]
    await database["websockets"].insert_many(expired)
    async with SocketRegistry(database, SOCKETS).holding("gina"):
        pass


async def test_open_sockets_have_their_leases_renewed(
    databases: tuple[Database, Database],
) -> None:
    database = databases[0]
    registry = SocketRegistry(database, SOCKETS, heartbeat_seconds=0.05)
    renewer = asyncio.create_task(registry.renew_forever())
    try:
        async with registry.holding("hana"):
            first = await database["websockets"].find_one({"owner": "hana"})
            assert first is not None
            async with asyncio.timeout(10):
                while True:
                    held = await database["websockets"].find_one({"owner": "hana"})
                    assert held is not None
                    if held["expiresAt"] > first["expiresAt"]:
                        break
                    await asyncio.sleep(0.05)
    finally:
        renewer.cancel()


async def test_a_limit_of_zero_is_none_and_writes_nothing(
    databases: tuple[Database, Database],
) -> None:
    database = databases[0]
    limiter = RateLimiter(database, NO_LIMIT)
    sockets = SocketRegistry(database, NO_LIMIT)
    for _ in range(3 * PER_MINUTE):
        await limiter.refund(await limiter.admit("ivan"))
    async with contextlib.AsyncExitStack() as held:
        for _ in range(3 * SOCKETS):
            await held.enter_async_context(sockets.holding("ivan"))
    assert await database.list_collection_names() == []
