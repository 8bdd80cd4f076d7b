"""`python -m services.api`: HTTP and WebSocket on API_HOST:API_PORT."""

import uvicorn
import uvloop

from services.api.app import create_app
from services.api.runtime import Runtime
from shared.settings import Settings, get_settings
from shared.startup import configure_logging, run_service


async def serve(settings: Settings) -> None:
    runtime = await Runtime.open(settings)
    config = uvicorn.Config(
        create_app(runtime),
        host=settings.api_host,
        port=settings.api_port,
        http="httptools",
        ws="websockets-sansio",
        ws_ping_interval=settings.ws_ping_seconds,
        ws_ping_timeout=settings.ws_ping_seconds,
        access_log=False,
        log_level="info",
    )
    await uvicorn.Server(config).serve()


def main() -> None:
    configure_logging()
    uvloop.run(serve(get_settings()))


if __name__ == "__main__":
    run_service("api", main)
