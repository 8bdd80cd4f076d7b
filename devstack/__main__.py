"""`python -m devstack`: run the whole system locally, offline if need be, until Ctrl-C."""

import argparse
import signal
import sys
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from pymongo.uri_parser import parse_uri

from devstack.processes import ROOT, port_open
from devstack.stack import Stack, mongo_reachable, start_mock_model, start_secantus
from devstack.supervise import Supervisor
from shared.redaction import redact
from shared.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--responders", type=int, default=1, help="responder processes to run")
    parser.add_argument("--logs", type=Path, default=ROOT / ".local" / "logs")
    args = parser.parse_args()
    settings = Settings()
    rabbit = settings.rabbitmq_url
    try:
        if not settings.mongodb_url.startswith("mongodb+srv://"):  # that one needs DNS
            parse_uri(settings.mongodb_url)
    except ValueError as error:  # pymongo's InvalidURI and ConfigurationError are ValueErrors
        _malformed("MONGODB_URL", settings.mongodb_url, error)
    try:
        rabbit_nodes = [_host_port(url, 5672) for url in rabbit.split(",")]
    except ValueError as error:
        _malformed("RABBITMQ_URL", rabbit, error)
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

    if not any(port_open(host, port) for host, port in rabbit_nodes):
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
        f"\nReady. Chat page: {url}/{_sign_in_hint(settings, url)}\n"
        f"API at {url} (logs in {args.logs})\n"
        f"  curl -s -X POST {url}/chat -H 'content-type: application/json' "
        '-d \'{"message": "Hello!", "conversationId": "demo"}\'\n'
        f"  python -m websockets {ws_url}/conversations/demo/stream\n"
        "A process that dies is restarted. Ctrl-C stops everything.",
        flush=True,
    )
    try:
        Supervisor(stack.processes, lambda line: print(line, flush=True)).run()
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


def _sign_in_hint(settings: Settings, url: str) -> str:
    """With users on, the page asks for a token: say how to get one that opens it signed in."""
    if settings.auth_jwt_secret is not None:
        return f" (signed in: .venv/bin/python -m services.api.token --sub NAME --page {url})"
    if settings.auth_jwks_url is not None:
        return " (it asks for a token from your identity provider)"
    return ""


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url.strip())
    return parts.hostname or "localhost", parts.port or default_port


def _malformed(variable: str, url: str, error: ValueError) -> NoReturn:
    sys.exit(f"devstack: error: {variable}={redact(url)} is not a valid URL ({error})")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    main()
