"""Group work that arrives while the previous batch is being handled.

A burst of requests, tokens or writes then costs one round trip per batch instead of one per
item, and an idle system hands each item over at once.
"""

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Batches(Generic[T]):
    """`add` from anywhere; `async for batch in batches` takes everything added since the last.

    A batch is never empty. The consumer decides the pace: whatever arrives while it handles
    one batch waits for the next.
    """

    def __init__(self) -> None:
        self._items: list[T] = []
        self._added = asyncio.Event()

    def add(self, item: T) -> None:
        self._items.append(item)
        self._added.set()

    def extend(self, items: Iterable[T]) -> None:
        self._items.extend(items)
        if self._items:
            self._added.set()

    def __len__(self) -> int:
        return len(self._items)

    async def __aiter__(self) -> AsyncIterator[list[T]]:
        while True:
            await self._added.wait()
            self._added.clear()
            batch, self._items = self._items, []
            if batch:
                yield batch
