"""The token path: idle replies go out token by token, busy ones merge while a publish waits,
and what was sealed reaches the progress writes."""

import asyncio
from typing import Any

import orjson

from services.responder.draft import Draft, Progress
from services.responder.output import ReplyOutput
from shared.events import UPDATED, message_event
from shared.schemas import Status
from tests.factories import message


class GatedExchange:
    """Records published batches; each publish waits until the test opens the gate."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = asyncio.Event()
        self.published = asyncio.Condition()

    async def publish(self, message: Any, routing_key: str) -> None:
        self.in_flight.set()
        await self.gate.wait()
        async with self.published:
            self.batches.append(orjson.loads(message.body))
            self.published.notify_all()


class RecordingStore:
    """Keeps every progress write, as MongoDB would receive it."""

    def __init__(self) -> None:
        self.saved: list[Progress] = []
        self.written = asyncio.Condition()

    async def save_progress(self, batch: list[Progress]) -> None:
        async with self.written:
            self.saved.extend(batch)
            self.written.notify_all()


def output(exchange: GatedExchange, store: RecordingStore | None = None) -> ReplyOutput:
    return ReplyOutput(exchange, store or RecordingStore(), store_interval=0)


def reply(message_id: str = "r1") -> Draft:
    return Draft(message("assistant", "", Status.STREAMING, "c1", attempt=1, message_id=message_id))


def deltas(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [event for batch in batches for event in batch if event["type"] == "message.delta"]


async def settle(exchange: GatedExchange, count: int) -> None:
    async with asyncio.timeout(5), exchange.published:
        await exchange.published.wait_for(lambda: len(exchange.batches) >= count)


async def test_an_idle_publisher_sends_each_token_at_once() -> None:
    exchange = GatedExchange()
    store = RecordingStore()
    async with output(exchange, store).running() as out:
        answer = reply()
        for count, token in enumerate(["Hello", " there"], start=1):
            out.token(answer, token)
            await settle(exchange, count)
    assert [(d["seq"], d["delta"]) for d in deltas(exchange.batches)] == [
        (1, "Hello"),
        (2, " there"),
    ]
    async with asyncio.timeout(5), store.written:
        await store.written.wait_for(lambda: store.saved and store.saved[-1].seq == 2)
    assert (store.saved[-1].message_id, store.saved[-1].text) == ("r1", "Hello there")


async def test_tokens_arriving_during_a_publish_merge_into_one_delta() -> None:
    exchange = GatedExchange()
    async with output(exchange).running() as out:
        first, second = reply("r1"), reply("r2")
        exchange.gate.clear()
        out.token(first, "a")
        await exchange.in_flight.wait()
        for token in ["b", "c", "d"]:
            out.token(first, token)
        out.token(second, "x")
        exchange.gate.set()
        await settle(exchange, 2)
    merged = exchange.batches[1]
    assert [(d["messageId"], d["seq"], d["delta"]) for d in merged] == [
        ("r1", 2, "bcd"),
        ("r2", 1, "x"),
    ]
    assert first.progress().text == "abcd" and first.progress().seq == 2


async def test_a_message_event_follows_the_deltas_sealed_before_it() -> None:
    exchange = GatedExchange()
    async with output(exchange).running() as out:
        answer = reply()
        exchange.gate.clear()
        out.token(answer, "partial")
        await exchange.in_flight.wait()
        out.token(answer, " text")
        out.close(answer)
        sending = asyncio.create_task(out.send(message_event(UPDATED, answer.message)))
        exchange.gate.set()
        await asyncio.wait_for(sending, 5)
    kinds = [(event["type"], event.get("seq")) for batch in exchange.batches for event in batch]
    assert kinds == [("message.delta", 1), ("message.delta", 2), ("message.updated", None)]
