"""`python -m devstack`: run the whole system locally, offline if need be, until Ctrl-C."""

import argparse
import signal
import sys
from pathlib import Path

from devstack.processes import ROOT, port_open
from devstack.stack import Stack, mongo_reachable, start_mock_model, start_secantus
from shared.settings import Settings
from shared.startup import redact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--responders", type=int, default=1, help="responder processes to run")
    parser.add_argument("--logs", type=Path, default=ROOT / ".local" / "logs")
    args = parser.parse_args()
    settings = Settings()
    stack = Stack(env={}, log_dir=args.logs)
    env = stack.env

    mongodb_url = settings.mongodb_url
    if not mongo_reachable(mongodb_url):
        storage = ROOT / ".local" / "mongo"
        storage.mkdir(parents=True, exist_ok=True)
        process, mongodb_url = start_secantus(args.logs, str(storage))
        stack.processes.append(process)
        print(
            f"MongoDB: none at MONGODB_URL, started SecantusDB at {mongodb_url} (data in {storage})"
        )
    env["MONGODB_URL"] = mongodb_url

    rabbit = settings.rabbitmq_url
    if not any(port_open(*_host_port(url, 5672)) for url in rabbit.split(",")):
        sys.exit(
            f"devstack: error: no RabbitMQ at RABBITMQ_URL={redact(rabbit)}; "
            "start it or set RABBITMQ_URL"
        )

    if settings.openai_api_key is None and settings.openai_base_url is None:
        process, base_url = start_mock_model(args.logs)
        stack.processes.append(process)
        env.update(OPENAI_BASE_URL=base_url, OPENAI_MODEL="mock-model")
        print(f"Model: no OPENAI_API_KEY, using the mock model at {base_url}")

    try:
        for index in range(args.responders):
            stack.start_responder(name=f"responder-{index}")
        _, url = stack.start_api(port=settings.api_port, name="api")
    except (RuntimeError, TimeoutError) as error:
        stack.stop()
        sys.exit(f"devstack: error: {error}")

    ws_url = url.replace("http://", "ws://")
    print(
        f"\nReady. API at {url} (logs in {args.logs})\n"
        f"  curl -s -X POST {url}/chat -H 'content-type: application/json' "
        '-d \'{"message": "Hello!", "conversationId": "demo"}\'\n'
        f"  python -m websockets {ws_url}/conversations/demo/stream\n"
        "Ctrl-C stops everything.",
        flush=True,
    )
    try:
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or default_port


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()
