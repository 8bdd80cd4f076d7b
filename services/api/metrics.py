"""The API's Prometheus metrics, defined once; `GET /metrics` serves them with the process's own.

Children that the hot path uses are bound here once, so counting costs an increment, never a
label lookup.
"""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "chat_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "chat_http_request_duration_seconds",
    "Time to answer an HTTP request, by method and route template.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
WEBSOCKETS_OPEN = Gauge(
    "chat_websockets_open", "WebSocket connections open on this instance (handshakes included)."
)
SUBSCRIBERS_DROPPED = Counter(
    "chat_subscribers_dropped",
    "WebSocket subscribers closed with 1013 for falling SUBSCRIBER_BUFFER events behind.",
)
RELAY_BATCHES = Counter(
    "chat_relay_batches", "Event batches this instance received from the chat-events fanout."
)
RELAY_LAG = Histogram(
    "chat_relay_lag_seconds",
    "From a responder publishing an event batch to this instance receiving it (clocks of "
    "different machines: keep them in sync).",
    buckets=LATENCY_BUCKETS,
)
OUTBOX_REPLIES = Gauge(
    "chat_outbox_replies",
    "Replies stored more than 5 s ago (the outbox's grace) whose job the broker has not "
    "confirmed, all of them, as this instance's outbox relay last counted them (every 2 s; "
    "0 while the broker is healthy).",
)
LIMITS_REFUSED = Counter(
    "chat_limits_refused",
    "Requests and WebSockets refused by a limit: rate (RATE_LIMIT_PER_MINUTE), active_replies "
    "(MAX_ACTIVE_REPLIES), websockets (MAX_WEBSOCKETS), body (MAX_BODY_BYTES).",
    ["limit"],
)
REFUSED_RATE = LIMITS_REFUSED.labels("rate")
REFUSED_ACTIVE_REPLIES = LIMITS_REFUSED.labels("active_replies")
REFUSED_WEBSOCKETS = LIMITS_REFUSED.labels("websockets")
REFUSED_BODY = LIMITS_REFUSED.labels("body")
