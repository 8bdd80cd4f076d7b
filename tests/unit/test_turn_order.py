"""Waiting for a turn: only the earliest waiting reply looks, and only when told to."""

import asyncio
from collections.abc import Callable

import aio_pika

from services.responder.turn_order import TurnOrder
from shared.broker import CONTROL_TYPES
from shared.keys import ConversationKey
from shared.schemas import TurnFreed
from tests.helpers import eventually

KEY = ConversationKey("alice", "c1")
OTHER = ConversationKey("alice", "c2")


class Recorder:
    def __init__(self) -> None:
        self.sent: list[aio_pika.Message] = []

    async def publish(self, message: aio_pika.Message, routing_key: str) -> object:
        self.sent.append(message)
        return None


class Turn:
    """A stand-in for MongoDB's answer to "is it this reply's turn?", counting the questions."""

    def __init__(self) -> None:
        self.free = False
        self.asked = 0

    async def is_next(self) -> str | None:
        self.asked += 1
        return "context" if self.free else None


async def until(condition: Callable[[], bool]) -> None:
    await eventually(condition, timeout=2, interval=0.001)


async def test_a_free_turn_is_taken_at_once() -> None:
    turn = Turn()
    turn.free = True
    assert await TurnOrder(Recorder()).wait(KEY, 1, turn.is_next) == "context"
    assert turn.asked == 1


async def test_waiting_replies_behind_the_first_never_ask() -> None:
    order = TurnOrder(Recorder(), recheck=60)
    turns = [Turn() for _ in range(50)]
    waits = [asyncio.create_task(order.wait(KEY, n, turn.is_next)) for n, turn in enumerate(turns)]
    await until(lambda: turns[0].asked == 1)
    await asyncio.sleep(0.05)
    assert [turn.asked for turn in turns] == [1] + [0] * 49

    turns[0].free = True
    order.heard(KEY)
    assert await waits[0] == "context"
    await until(lambda: turns[1].asked == 1)  # the next one looks once the first has gone
    assert sum(turn.asked for turn in turns[2:]) == 0
    for wait in waits[1:]:
        wait.cancel()
    await asyncio.gather(*waits[1:], return_exceptions=True)


async def test_a_notice_for_another_conversation_wakes_nobody() -> None:
    order = TurnOrder(Recorder(), recheck=60)
    turn = Turn()
    waiting = asyncio.create_task(order.wait(KEY, 1, turn.is_next))
    await until(lambda: turn.asked == 1)
    order.heard(OTHER)
    await asyncio.sleep(0.05)
    assert turn.asked == 1
    waiting.cancel()


async def test_a_lost_notice_is_made_up_for_by_a_recheck() -> None:
    order = TurnOrder(Recorder(), recheck=0.05)
    turn = Turn()
    waiting = asyncio.create_task(order.wait(KEY, 1, turn.is_next))
    await until(lambda: turn.asked == 1)
    turn.free = True
    assert await asyncio.wait_for(waiting, 2) == "context"


async def test_an_earlier_reply_arriving_late_goes_first() -> None:
    order = TurnOrder(Recorder(), recheck=60)
    later, earlier = Turn(), Turn()
    waiting_later = asyncio.create_task(order.wait(KEY, 9, later.is_next))
    await until(lambda: later.asked == 1)
    waiting_earlier = asyncio.create_task(order.wait(KEY, 3, earlier.is_next))
    await until(lambda: earlier.asked == 1)
    order.heard(KEY)
    await until(lambda: earlier.asked == 2)
    assert later.asked == 1
    earlier.free = True
    order.heard(KEY)
    assert await waiting_earlier == "context"
    await until(lambda: later.asked == 2)
    waiting_later.cancel()


async def test_finishing_here_wakes_here_and_tells_every_responder() -> None:
    control = Recorder()
    order = TurnOrder(control, recheck=60)
    turn = Turn()
    waiting = asyncio.create_task(order.wait(KEY, 1, turn.is_next))
    await until(lambda: turn.asked == 1)
    turn.free = True
    order.finished(KEY)
    assert await waiting == "context"
    await until(lambda: len(control.sent) == 1)
    (notice,) = control.sent
    assert notice.type == CONTROL_TYPES[TurnFreed]
    assert TurnFreed.model_validate_json(notice.body) == TurnFreed(
        owner="alice", conversation_id="c1"
    )
