"""The FastAPI application, built around already-open connections."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError

from services.api import conversations
from services.api.connections import Connections
from services.api.page import add_page
from services.api.routes import router


def create_app(connections: Connections) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with connections.running():
            yield

    app = FastAPI(
        title="Streaming chat API",
        lifespan=lifespan,
        docs_url=None,  # served by add_page from vendored files
        redoc_url=None,  # ReDoc would come from a CDN
    )
    app.state.connections = connections
    app.add_exception_handler(PyMongoError, database_unavailable)
    app.include_router(router)
    app.include_router(conversations.router)
    add_page(app)
    return app


async def database_unavailable(request: Request, error: Exception) -> JSONResponse:
    """MongoDB is away: say so plainly; writes are transactional, so nothing was half-stored."""
    return JSONResponse(
        {"detail": "the database is unavailable; nothing was changed, try again shortly"},
        status.HTTP_503_SERVICE_UNAVAILABLE,
    )
