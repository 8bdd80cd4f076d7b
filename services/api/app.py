"""The FastAPI application, built around an already-open runtime."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from services.api import conversations
from services.api.page import add_page
from services.api.routes import router
from services.api.runtime import Runtime


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
    )
    app.state.runtime = runtime
    app.add_exception_handler(PyMongoError, database_unavailable)
    app.include_router(router)
    app.include_router(conversations.router)
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
