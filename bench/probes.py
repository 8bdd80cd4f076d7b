"""What the system spends, measured from outside so no service has to change for it.

- CPU and memory: psutil on each process (and its children), CPU times at start and end, RSS
  sampled for the peak.
- AMQP messages: a tap queue of the bench's own bound to the `chat-events` fanout in the run's
  vhost gets one copy of every event batch published; add one `chat-message` job per accepted
  POST for the total.
- MongoDB writes: `serverStatus` opcounters (write commands: one bulk write is one command) and
  the oplog of the one-node replica set (documents written), both taken before and after a run.
- MongoDB time per command (--db-profile): the database's own profiler over the run.
"""

import asyncio
import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import orjson
import psutil
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from bson import Timestamp
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from shared.broker import declare_events_exchange

SAMPLE_SECONDS = 0.1
QUIET_WINDOW_SECONDS = 3.0


@dataclass(frozen=True, slots=True)
class Usage:
    cpu_seconds: float
    cpu_percent: float
    """Of one core, over the run."""
    peak_rss_mb: float
    peak_cpu_percent: float = 0.0
    """The busiest second of the run, % of one core: near 100 for one event loop is saturated."""


class ProcessMonitor:
    """CPU seconds and peak RSS of named processes over one run, and the whole machine's CPU.

    Each service's children are looked up once at the start (a lookup scans /proc), so a
    sample costs one read per process.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self._families: dict[str, list[psutil.Process]] = {}
        for name, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self._families[name] = _family(psutil.Process(pid))
        self._cpu_start: dict[str, float] = {}
        self._peak: dict[str, int] = {}
        self._cpu_samples: dict[str, list[tuple[float, float]]] = {}
        self._machine_start = psutil.cpu_times()
        self._started = 0.0
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._started = time.monotonic()
        self._machine_start = psutil.cpu_times()
        self._cpu_start = {name: _cpu(family) for name, family in self._families.items()}
        self._peak = dict.fromkeys(self._families, 0)
        self._cpu_samples = {name: [] for name in self._families}
        self._sampler = asyncio.create_task(self._sample())

    async def stop(self) -> dict[str, Usage]:
        """Usage per process, plus `machine` (all CPUs) and `others` (what is not ours)."""
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
        self._take_sample()
        elapsed = max(time.monotonic() - self._started, 1e-9)
        usage = {}
        for name, family in self._families.items():
            cpu = _cpu(family) - self._cpu_start[name]
            peak = _busiest_second(self._cpu_samples[name])
            usage[name] = Usage(cpu, 100 * cpu / elapsed, self._peak[name] / 2**20, peak)
        busy = _busy(psutil.cpu_times()) - _busy(self._machine_start)
        ours = sum(item.cpu_seconds for item in usage.values())
        usage["machine"] = Usage(busy, 100 * busy / elapsed, 0.0)
        usage["others"] = Usage(busy - ours, 100 * (busy - ours) / elapsed, 0.0)
        return usage

    async def _sample(self) -> None:
        while True:
            self._take_sample()
            await asyncio.sleep(SAMPLE_SECONDS)

    def _take_sample(self) -> None:
        now = time.monotonic()
        for name, family in self._families.items():
            self._peak[name] = max(self._peak[name], _rss(family))
            self._cpu_samples[name].append((now, _cpu(family)))


def _busiest_second(samples: list[tuple[float, float]], window: float = 1.0) -> float:
    """Highest CPU % of one core over any stretch of at least `window` seconds between samples."""
    best, start = 0.0, 0
    for end in range(len(samples)):
        while start + 1 < end and samples[end][0] - samples[start + 1][0] >= window:
            start += 1
        span = samples[end][0] - samples[start][0]
        if span >= window:
            best = max(best, 100 * (samples[end][1] - samples[start][1]) / span)
    return best


async def wait_quiet(pids: dict[str, int], limit_percent: float, longest: float) -> float:
    """Wait until processes other than `pids` use under `limit_percent` of one core (over 3s).

    On a shared machine, someone else's test run distorts every number; returns the last
    measured share of those others, whether or not it got under the limit in time.
    """
    families = []
    for pid in pids.values():
        with contextlib.suppress(psutil.Error):
            families.append(_family(psutil.Process(pid)))
    deadline = time.monotonic() + longest
    while True:
        machine, ours = _busy(psutil.cpu_times()), sum(_cpu(family) for family in families)
        await asyncio.sleep(QUIET_WINDOW_SECONDS)
        machine = _busy(psutil.cpu_times()) - machine
        ours = sum(_cpu(family) for family in families) - ours
        others = 100 * (machine - ours) / QUIET_WINDOW_SECONDS
        if others < limit_percent or time.monotonic() > deadline:
            return others


def _busy(times: Any) -> float:
    """CPU seconds spent working, summed over all CPUs (guest time is already in user)."""
    fields = ("user", "nice", "system", "irq", "softirq", "steal")
    return float(sum(getattr(times, name, 0.0) for name in fields))


def _family(process: psutil.Process) -> list[psutil.Process]:
    """A service and whatever it spawned; the bench alone, since the services are its children."""
    if process.pid == os.getpid():
        return [process]
    try:
        return [process, *process.children(recursive=True)]
    except psutil.Error:
        return [process]


def _cpu(family: list[psutil.Process]) -> float:
    total = 0.0
    for member in family:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system
    return total


def _rss(family: list[psutil.Process]) -> int:
    total = 0
    for member in family:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def find_rabbitmq_pid() -> int | None:
    """The local broker's Erlang VM, if it runs on this machine."""
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "beam.smp":
            return int(process.pid)
    return None


def listening_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:`port`, for a stack the bench did not start."""
    with contextlib.suppress(psutil.Error):
        for connection in psutil.net_connections("tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
            ):
                return connection.pid
    return None


@dataclass(slots=True)
class AmqpCounts:
    messages: int = 0
    bytes: int = 0
    events: Counter[str] = field(default_factory=Counter)
    reconnections: int = 0
    """Times the tap lost the broker: a run with any is disturbed (e.g. by a broker restart);
    counts after such a drop are incomplete."""


class AmqpTap:
    """Counts the batches on the `chat-events` fanout through a queue of its own.

    A plain connection, not a robust one: when the broker goes away (someone restarts it), the
    tap counts the drop, and `ensure_open` opens it afresh before the next run.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts = AmqpCounts()
        self._connection: AbstractConnection | None = None
        self._closing = False
        self._broken = False
        """The broker closed the connection (its `is_closed` may still say False)."""

    async def ensure_open(self, timeout: float = 60.0) -> None:
        if self._connection is not None and not self._connection.is_closed and not self._broken:
            return
        if self._connection is not None and not self._connection.is_closed:
            with contextlib.suppress(Exception):
                await self._connection.close()
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self._open()
                return
            except (OSError, aio_pika.exceptions.AMQPError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    async def _open(self) -> None:
        connection = await aio_pika.connect(self.url)
        connection.close_callbacks.add(self._dropped)
        channel = await connection.channel()
        exchange = await declare_events_exchange(channel)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)
        await queue.consume(self._on_message, no_ack=True)
        self._connection, self._broken = connection, False

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        counts = self.counts
        counts.messages += 1
        counts.bytes += len(message.body)
        with contextlib.suppress(ValueError, TypeError, KeyError):
            counts.events.update(event["type"] for event in orjson.loads(message.body))

    def _dropped(self, *_: object) -> None:
        if not self._closing:
            self._broken = True
            self.counts.reconnections += 1

    def take(self) -> AmqpCounts:
        """The counts since the last take."""
        counts, self.counts = self.counts, AmqpCounts()
        return counts

    async def close(self) -> None:
        self._closing = True
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()


@dataclass(frozen=True, slots=True)
class WriteMark:
    commands: int
    oplog: Timestamp | None


@dataclass(frozen=True, slots=True)
class Writes:
    commands: int
    """insert + update + delete commands (a bulk write or insert_many is one)."""
    documents: int | None
    """Documents written in the services' database, from the oplog (None: no oplog)."""


class MongoWrites:
    def __init__(self, url: str, database: str) -> None:
        self._client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=5000)
        self._database = database

    def mark(self) -> WriteMark:
        return WriteMark(self._commands(), self._last_oplog())

    def since(self, mark: WriteMark) -> Writes:
        commands = self._commands() - mark.commands
        documents = None
        with contextlib.suppress(PyMongoError):
            oplog = self._client.local["oplog.rs"]
            query: dict[str, object] = {
                "op": {"$in": ["i", "u", "d"]},
                "ns": {"$in": [f"{self._database}.messages", f"{self._database}.conversations"]},
            }
            if mark.oplog is not None:
                query["ts"] = {"$gt": mark.oplog}
            documents = oplog.count_documents(query)
        return Writes(commands, documents)

    def clear(self) -> None:
        """Empty the services' collections (indexes stay), so every run starts from the same
        state: SecantusDB's findAndModify scans its collection, so stored data slows it down."""
        database = self._client[self._database]
        for name in database.list_collection_names():
            database[name].delete_many({})

    def _commands(self) -> int:
        counters = self._client.admin.command("serverStatus")["opcounters"]
        return int(counters["insert"] + counters["update"] + counters["delete"])

    def _last_oplog(self) -> Timestamp | None:
        with contextlib.suppress(PyMongoError):
            for entry in self._client.local["oplog.rs"].find().sort("$natural", -1).limit(1):
                stamp: Timestamp = entry["ts"]
                return stamp
        return None

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class CommandTime:
    """The database's own timing of one kind of command over a run (its profiler's `millis`)."""

    command: str
    """Command and collection, e.g. `update messages`."""
    count: int
    documents: int | None
    """Documents the commands carried: inserted, or updated (one per update statement); None
    for reads, whose profile entries SecantusDB does not count."""
    total_ms: float
    p50_ms: float
    max_ms: float


class MongoProfiler:
    """MongoDB's profiler (level 2: every command) on the services' database during a run.

    It answers what a burst costs the database per command, measured by the database itself,
    so the stand-in's floor can be told apart from the services' own time.
    """

    def __init__(self, url: str, database: str) -> None:
        self._client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=5000)
        self._database = self._client[database]

    def start(self) -> None:
        self._database.command("profile", 0)
        self._database.drop_collection("system.profile")
        self._database.command("profile", 2, slowms=0)

    def stop(self) -> list[CommandTime]:
        self._database.command("profile", 0)
        grouped: dict[str, list[tuple[float, int | None]]] = {}
        for entry in self._database["system.profile"].find():
            command: dict[str, Any] = entry.get("command") or {}
            if not command:
                continue
            name = next(iter(command))
            collection = command[name] if isinstance(command[name], str) else ""
            if collection.startswith("system."):
                continue
            key = f"{name} {collection}".strip()
            grouped.setdefault(key, []).append((float(entry.get("millis", 0)), _documents(entry)))
        return sorted(
            (_command_time(key, timings) for key, timings in grouped.items()),
            key=lambda item: -item.total_ms,
        )

    def close(self) -> None:
        self._client.close()


def _documents(entry: dict[str, Any]) -> int | None:
    command = entry["command"]
    for field_name in ("documents", "updates", "deletes"):
        if isinstance(command.get(field_name), list):
            return len(command[field_name])
    returned = entry.get("nreturned")
    return None if returned is None else int(returned)


def _command_time(key: str, timings: list[tuple[float, int | None]]) -> CommandTime:
    times = sorted(millis for millis, _ in timings)
    counted = [documents for _, documents in timings if documents is not None]
    return CommandTime(
        command=key,
        count=len(times),
        documents=sum(counted) if counted else None,
        total_ms=sum(times),
        p50_ms=times[len(times) // 2],
        max_ms=times[-1],
    )
