"""The FastAPI application, built around an already-open runtime."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException

from services.api import conversations, stream
from services.api.auth import (
    AuthUnavailable,
    TokenRejected,
    Verifier,
    token_rejected,
    warn_if_open,
)
from services.api.body_limit import BodySizeLimit
from services.api.errors import http_error, validation_failed
from services.api.limits import Limits, RateLimited, TooManyActiveReplies
from services.api.metrics import REFUSED_ACTIVE_REPLIES, REFUSED_RATE
from services.api.page import add_page
from services.api.routes import router
from services.api.runtime import Runtime
from services.api.telemetry import Telemetry, bind_path_context, metrics
from shared.settings import Settings
from shared.tasks import background


def create_app(runtime: Runtime, settings: Settings, verifier: Verifier) -> FastAPI:
    limits = Limits(runtime.database, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await limits.ensure_indexes()
        async with runtime.running(), background(limits.sockets.renew_forever()):
            warn_if_open(verifier)
            yield
        await verifier.close()

    app = FastAPI(
        title="Streaming chat API",
        lifespan=lifespan,
        docs_url=None,  # served by add_page from vendored files
        redoc_url=None,  # ReDoc would come from a CDN
        dependencies=[Depends(bind_path_context)],
    )
    app.add_middleware(Telemetry)
    app.state.runtime = runtime
    app.state.verifier = verifier
    app.state.limits = limits
    app.state.cors_origins = settings.cors_origins
    app.add_exception_handler(PyMongoError, database_unavailable)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(TokenRejected, token_rejected)
    app.add_exception_handler(AuthUnavailable, keys_unavailable)
    app.add_exception_handler(RateLimited, rate_limited)
    app.add_exception_handler(TooManyActiveReplies, too_many_replies)
    app.include_router(router)
    app.include_router(conversations.router)
    app.include_router(stream.router)
    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"description": "This instance's metrics, in Prometheus' text format"}},
    )
    add_page(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
    )
    return app


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """MongoDB is away: say so plainly.

    No transaction spans a request's writes: one cut off by the outage may or may not have
    landed, which is what `POST /chat`'s `Idempotency-Key` makes safe to retry.
    """
    return JSONResponse(
        {"detail": "the database is unavailable; try again shortly"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
    )


async def keys_unavailable(request: Request, error: Exception) -> JSONResponse:
    """The identity provider's keys cannot be fetched: not the caller's fault."""
    return JSONResponse(
        {"detail": "the identity provider's keys are unavailable; try again shortly"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


async def rate_limited(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RateLimited)
    REFUSED_RATE.inc()
    return JSONResponse(
        {"detail": str(error)},
        status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(error.retry_after)},
    )


async def too_many_replies(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, TooManyActiveReplies)
    REFUSED_ACTIVE_REPLIES.inc()
    return JSONResponse(
        {"detail": f"{error}; wait for one to finish or stop it"},
        status.HTTP_429_TOO_MANY_REQUESTS,
        headers={"Retry-After": str(error.retry_after)},
    )
