"""Batches: what arrives while one batch is handled goes, all of it, in the next."""

import asyncio

import pytest

from shared.batches import BatchedCalls, Batches
from shared.tasks import background
from tests.helpers import eventually


async def test_items_added_during_a_batch_form_the_next_one() -> None:
    batches: Batches[int] = Batches()
    handling = asyncio.Event()
    release = asyncio.Event()
    taken: list[list[int]] = []

    async def consume() -> None:
        async for batch in batches:
            taken.append(batch)
            handling.set()
            await release.wait()
            if len(taken) == 2:
                return

    consumer = asyncio.create_task(consume())
    batches.add(1)
    await asyncio.wait_for(handling.wait(), 5)
    batches.add(2)
    batches.extend([3, 4])
    release.set()
    await asyncio.wait_for(consumer, 5)
    assert taken == [[1], [2, 3, 4]]
    assert len(batches) == 0


async def test_extending_with_nothing_does_not_wake_the_consumer() -> None:
    batches: Batches[int] = Batches()
    batches.extend([])
    iterator = aiter(batches)
    waiting: asyncio.Future[list[int]] = asyncio.ensure_future(anext(iterator))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    batches.add(7)
    assert await asyncio.wait_for(waiting, 5) == [7]


async def test_calls_asked_together_are_answered_by_one_batch() -> None:
    batches: list[list[int]] = []

    async def double(keys: list[int]) -> list[int]:
        batches.append(keys)
        await asyncio.sleep(0.01)
        return [key * 2 for key in keys]

    calls = BatchedCalls(double)
    async with background(calls.serve()):
        assert await calls(1) == 2
        assert await asyncio.gather(*(calls(key) for key in range(10))) == [
            key * 2 for key in range(10)
        ]
    assert batches == [[1], list(range(10))]


async def test_a_failed_batch_fails_its_callers_and_the_next_one_runs() -> None:
    async def fragile(keys: list[int]) -> list[int]:
        if 0 in keys:
            raise ValueError("no zero")
        return keys

    calls = BatchedCalls(fragile)
    async with background(calls.serve()):
        with pytest.raises(ValueError, match="no zero"):
            await calls(0)
        assert await calls(7) == 7


async def test_a_caller_that_gave_up_is_left_out() -> None:
    asked: list[list[int]] = []
    release = asyncio.Event()

    async def slow(keys: list[int]) -> list[int]:
        asked.append(keys)
        await release.wait()
        return keys

    calls = BatchedCalls(slow)
    async with background(calls.serve()):
        first = asyncio.create_task(calls(1))
        await eventually(lambda: asked == [[1]], timeout=2, interval=0.001)
        gone = asyncio.create_task(calls(2))
        kept = asyncio.create_task(calls(3))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        assert (await first, await kept) == (1, 3)
    assert asked == [[1], [3]]
