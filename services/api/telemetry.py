"""Every HTTP request and WebSocket: a request id on its log lines, counted and timed.

A pure ASGI middleware, so a streaming WebSocket costs nothing per frame: the WebSocket gauge
moves once when it connects and once when it ends, and an HTTP request is counted once it is
answered, by its route template (never its raw path: one series per conversation).
"""

import re
import time
import uuid

import structlog
from fastapi import Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.metrics import HTTP_DURATION, HTTP_REQUESTS, WEBSOCKETS_OPEN

REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")
PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
UNMATCHED = "unmatched"
PATH_CONTEXT = {"conversation_id": "conversationId", "message_id": "messageId"}

access = structlog.get_logger("access")


def request_id(scope: Scope) -> str:
    """The proxy's X-Request-ID when it is a plain token, else a new one."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and REQUEST_ID.match(value):
            return str(value.decode())
    return uuid.uuid4().hex


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", UNMATCHED)


class Telemetry:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._series: dict[tuple[str, str, int], tuple[MetricWrapperBase, MetricWrapperBase]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        rid = request_id(scope)
        started = time.perf_counter()
        status = 500

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(requestId=rid):
            try:
                await self.app(scope, receive, answer)
            finally:
                elapsed = time.perf_counter() - started
                route = route_template(scope)
                self._count(scope["method"], route, status, elapsed)
                log = access.debug if scope["path"] in PROBES else access.info
                log(
                    "request",
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=status,
                    durationMs=round(elapsed * 1000, 1),
                )

    def _count(self, method: str, route: str, status: int, elapsed: float) -> None:
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                HTTP_REQUESTS.labels(method, route, str(status)),
                HTTP_DURATION.labels(method, route),
            )
        requests, duration = series
        requests.inc()  # type: ignore[attr-defined]
        duration.observe(elapsed)  # type: ignore[attr-defined]

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Counted while connected; `send` is passed through untouched, so frames cost nothing."""
        rid = request_id(scope)
        started = time.perf_counter()
        WEBSOCKETS_OPEN.inc()
        with structlog.contextvars.bound_contextvars(requestId=rid):
            try:
                await self.app(scope, receive, send)
            finally:
                WEBSOCKETS_OPEN.dec()
                access.debug(
                    "websocket closed",
                    path=scope["path"],
                    durationMs=round((time.perf_counter() - started) * 1000, 1),
                )


async def bind_path_context(connection: HTTPConnection) -> None:
    """An app-wide dependency: the conversation and message a route is about, on its lines."""
    values = {
        PATH_CONTEXT[name]: value
        for name, value in connection.path_params.items()
        if name in PATH_CONTEXT
    }
    if values:
        structlog.contextvars.bind_contextvars(**values)


async def metrics(request: Request) -> Response:
    """Prometheus' text format: this instance's counters and the process's own."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
