"""The one MongoDB connection of a service, through PyMongo's native asyncio API."""

import asyncio
import time
from typing import Any

from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import ConfigurationError, PyMongoError

from shared.startup import DependencyUnavailable

Document = dict[str, Any]
Database = AsyncDatabase[Document]
Collection = AsyncCollection[Document]

SELECTION_TIMEOUT_MS = 3000
"""How long an operation waits for an unreachable MongoDB before failing (a 503 to users)."""


async def connect(url: str, database: str, timeout: float) -> Database:
    """The database, once the server answers; a clear start-up error if it never does."""
    try:
        client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS, tz_aware=True
        )
    except (ConfigurationError, ValueError) as error:
        raise DependencyUnavailable("MONGODB_URL", url, error) from error
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                await client.admin.command("ping")
            return client[database]
        except (PyMongoError, TimeoutError) as error:
            if time.monotonic() >= deadline:
                await client.close()
                reason = f"no answer within {timeout:g}s"
                raise DependencyUnavailable("MONGODB_URL", url, reason) from error


async def ping(database: Database) -> None:
    await database.command("ping")
