"""The FastAPI application, built around an already-open runtime."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException

from services.api import conversations
from services.api.errors import http_error, validation_failed
from services.api.page import add_page
from services.api.routes import router
from services.api.runtime import Runtime
from services.api.telemetry import Telemetry, bind_path_context, metrics


def create_app(runtime: Runtime) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with runtime.running():
            yield

    app = FastAPI(
        title="Streaming chat API",
        lifespan=lifespan,
        docs_url=None,  # served by add_page from vendored files
        redoc_url=None,  # ReDoc would come from a CDN
        dependencies=[Depends(bind_path_context)],
    )
    app.add_middleware(Telemetry)
    app.state.runtime = runtime
    app.add_exception_handler(PyMongoError, database_unavailable)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(HTTPException, http_error)
    app.include_router(router)
    app.include_router(conversations.router)
    app.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        response_class=PlainTextResponse,
        summary="Prometheus metrics",
        responses={200: {"description": "This instance's metrics, in Prometheus' text format"}},
    )
    add_page(app)
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
