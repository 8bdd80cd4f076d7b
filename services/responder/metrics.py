"""The responder's Prometheus metrics, served on METRICS_PORT (0: not served).

Children that the hot path uses are bound here once: counting a delta's tokens is one
increment, never a label lookup.
"""

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from shared.schemas import Message, Status
from shared.startup import StartupError

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

REPLIES = Counter("chat_replies", "Replies finished, by final status.", ["status"])
REPLIES_COMPLETED = REPLIES.labels("completed")
REPLIES_FAILED = REPLIES.labels("failed")
REPLIES_STOPPED = REPLIES.labels("stopped")
TOKENS = Counter("chat_tokens_streamed", "Tokens received from the model and streamed.")
TIME_TO_FIRST_TOKEN = Histogram(
    "chat_time_to_first_token_seconds",
    "From the user's message being accepted to the first token of its reply (each attempt).",
    buckets=LATENCY_BUCKETS,
)
MODEL_LATENCY = Histogram(
    "chat_model_latency_seconds",
    "From calling the model to its first token.",
    buckets=LATENCY_BUCKETS,
)
MODEL_ERRORS = Counter("chat_model_errors", "Model calls that failed, by kind.", ["kind"])
REDELIVERIES = Counter(
    "chat_job_redeliveries",
    "chat-message jobs delivered again: a responder died or handed it back, or a connection "
    "was lost.",
)
LEASE_TAKEOVERS = Counter(
    "chat_lease_takeovers",
    "Replies this responder restarted after another attempt had started them (its responder "
    "died, hung or handed them back).",
)
REPLIES_IN_PROGRESS = Gauge("chat_replies_in_progress", "Replies this responder holds now.")
REPLY_SLOTS = Gauge(
    "chat_reply_slots", "Replies this responder may hold at once (RESPONDER_CONCURRENCY)."
)


def count_finished(reply: Message) -> None:
    if reply.stopped:
        REPLIES_STOPPED.inc()
    elif reply.status == Status.COMPLETED:
        REPLIES_COMPLETED.inc()
    else:
        REPLIES_FAILED.inc()


def first_token(reply: Message, model_seconds: float) -> None:
    """A reply attempt's first token: the model's latency, and the user's wait since posting."""
    MODEL_LATENCY.observe(model_seconds)
    accepted = datetime.fromisoformat(reply.timestamp).timestamp()
    TIME_TO_FIRST_TOKEN.observe(max(time.time() - accepted, 0.0))


@contextlib.contextmanager
def metrics_served(port: int, slots: int, replies_in_progress: Callable[[], int]) -> Iterator[None]:
    """Serve /metrics on `port` (all interfaces) for the block; 0 serves nothing."""
    REPLY_SLOTS.set(slots)
    REPLIES_IN_PROGRESS.set_function(lambda: float(replies_in_progress()))
    if port == 0:
        yield
        return
    try:
        server, thread = start_http_server(port)
    except OSError as error:
        raise StartupError(f"cannot serve metrics on METRICS_PORT={port} ({error})") from error
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
