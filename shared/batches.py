"""Group work that arrives while the previous batch is being handled.

A burst of requests, tokens or writes then costs one round trip per batch instead of one per
item, and an idle system hands each item over at once.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


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


class BatchedCalls(Generic[K, V]):
    """`await calls(key)` from many tasks; `handle` answers every key asked since its last call.

    `handle(keys)` returns one answer per key, in order. A failure fails every caller of that
    batch. Callers that gave up meanwhile are left out of the next batch.
    """

    def __init__(self, handle: Callable[[list[K]], Awaitable[list[V]]]) -> None:
        self._handle = handle
        self._asked: Batches[tuple[K, asyncio.Future[V]]] = Batches()

    async def __call__(self, key: K) -> V:
        answer: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._asked.add((key, answer))
        return await answer

    async def serve(self) -> None:
        async for batch in self._asked:
            waiting = [(key, answer) for key, answer in batch if not answer.done()]
            if not waiting:
                continue
            try:
                answers = await self._handle([key for key, _ in waiting])
            except Exception as error:
                for _, answer in waiting:
                    if not answer.done():
                        answer.set_exception(error)
                continue
            for (_, answer), value in zip(waiting, answers, strict=True):
                if not answer.done():
                    answer.set_result(value)
