"""Background loops tied to a block: started on entry, cancelled and awaited on exit.

The block gets their tasks, in the order of the loops, for an owner that reports whether one of
them still runs (the relay's readiness, say).
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any


@contextlib.asynccontextmanager
async def background(
    *loops: Coroutine[Any, Any, None],
) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
