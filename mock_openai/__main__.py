"""Run the mock as its own process; env MOCK_HOST, MOCK_PORT, MOCK_TOKENS, MOCK_DELAY_MS,
MOCK_REASONING_TOKENS and MOCK_REASONING_FIELD set the defaults.
"""

import argparse
import logging
import os
import socket

import uvicorn

from mock_openai.app import create_app
from mock_openai.directives import REASONING_FIELDS
from mock_openai.stream import drop_abort_logs


class _AnnouncingServer(uvicorn.Server):
    """Prints the base URL once the socket listens, so launchers can see where it went."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            print(f"mock_openai listening on http://{self.config.host}:{port}/v1", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m mock_openai", description=__doc__)
    parser.add_argument("--host", default=env.get("MOCK_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(env.get("MOCK_PORT", "8100")))
    parser.add_argument("--tokens", type=int, default=int(env.get("MOCK_TOKENS", "40")))
    parser.add_argument("--delay-ms", type=float, default=float(env.get("MOCK_DELAY_MS", "20")))
    parser.add_argument(
        "--reasoning-tokens",
        type=int,
        default=int(env.get("MOCK_REASONING_TOKENS", "0")),
        help="reasoning tokens streamed before each reply's text",
    )
    parser.add_argument(
        "--reasoning-field",
        choices=REASONING_FIELDS,
        default=env.get("MOCK_REASONING_FIELD", REASONING_FIELDS[0]),
        help="the delta field that carries reasoning",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = uvicorn.Config(
        create_app(
            tokens=args.tokens,
            delay_ms=args.delay_ms,
            reasoning=args.reasoning_tokens,
            reasoning_field=args.reasoning_field,
        ),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,  # hung streams must not keep a stopped mock alive
    )
    logging.getLogger("uvicorn.error").addFilter(drop_abort_logs)
    _AnnouncingServer(config).run()


if __name__ == "__main__":
    main()
