"""The FastAPI application, built around already-open connections."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import ORJSONResponse

from services.api.connections import Connections
from services.api.routes import router


def create_app(connections: Connections) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connections.start()
        yield
        await connections.close()

    app = FastAPI(
        title="Streaming chat API",
        lifespan=lifespan,
        default_response_class=ORJSONResponse,
    )
    app.state.connections = connections
    app.include_router(router)
    return app
