"""`python -m services.api`: HTTP and WebSocket on API_HOST:API_PORT."""

import uvicorn
import uvloop

from services.api.app import create_app
from services.api.auth import verifier_from
from services.api.runtime import Runtime
from shared.logs import configure_logging
from shared.settings import Settings, get_settings
from shared.startup import run_service


async def serve(settings: Settings) -> None:
    verifier = verifier_from(settings)  # a bad AUTH_* setting stops us before connecting
    runtime = await Runtime.open(settings)
    config = uvicorn.Config(
        create_app(runtime, settings, verifier),
        host=settings.api_host,
        port=settings.api_port,
        http="httptools",
        ws="websockets-sansio",
        ws_ping_interval=settings.ws_ping_seconds,
        ws_ping_timeout=settings.ws_ping_seconds,
        access_log=False,  # services.api.telemetry logs each request, with its request id
        log_config=None,  # uvicorn's lines go through shared.logs like every other
        log_level=settings.log_level.lower(),
    )
    await uvicorn.Server(config).serve()


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    uvloop.run(serve(settings))


if __name__ == "__main__":
    run_service("api", main)
