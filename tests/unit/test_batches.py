"""Batches: what arrives while one batch is handled goes, all of it, in the next."""

import asyncio

from shared.batches import Batches


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
