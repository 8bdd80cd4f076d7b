"""shared.logs: both formats, context on every line, uvicorn's lines alike, no secret."""

import io
import logging
from collections.abc import Iterator

import orjson
import pytest
import structlog

from shared.logs import about_message, configure_logging

SECRETS = {
    "ws": "/conversations/c1/stream?access_token=eyJhbGciOiJIUzI1NiJ9.e30.s3cret-sig",
    "url": "amqp://chat:s3cret-password@rabbit-1:5672/",
    "bearer": "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.s3cret-sig",
    "key": "OPENAI_API_KEY=sk-proj-s3cretkey0123456789",
}


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_bound_context_from_structlog_and_stdlib() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    with structlog.contextvars.bound_contextvars(requestId="r-1"):
        about_message("conv-1", "msg-1")
        structlog.get_logger("ours").info("reply finished", status="completed")
        logging.getLogger("theirs").warning("renewing %d leases failed", 3)
    ours, theirs = (orjson.loads(line) for line in lines(stream))
    for record in (ours, theirs):
        assert record["requestId"] == "r-1"
        assert record["conversationId"] == "conv-1"
        assert record["messageId"] == "msg-1"
        assert record["timestamp"].endswith("Z")
    assert (ours["event"], ours["level"], ours["logger"]) == ("reply finished", "info", "ours")
    assert ours["status"] == "completed"
    assert (theirs["event"], theirs["level"]) == ("renewing 3 leases failed", "warning")


def test_text_lines_are_key_value() -> None:
    stream = io.StringIO()
    configure_logging("text", stream=stream)
    about_message("conv-1", "msg-1")
    logging.getLogger("theirs").info("hello")
    (line,) = lines(stream)
    assert "hello" in line and "conversationId=conv-1" in line and "messageId=msg-1" in line
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(line)


def test_the_default_is_json_off_a_terminal() -> None:
    stream = io.StringIO()  # not a terminal, like a container's or a file's output
    configure_logging(None, stream=stream)
    logging.getLogger("theirs").info("hello")
    assert orjson.loads(lines(stream)[0])["event"] == "hello"


def test_uvicorn_lines_use_the_same_format() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    assert orjson.loads(lines(stream)[0])["logger"] == "uvicorn.error"


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_in_any_field(log_format: str) -> None:
    stream = io.StringIO()
    configure_logging(log_format, stream=stream)  # type: ignore[arg-type]
    for name, text in SECRETS.items():
        logging.getLogger("theirs").info("%s: %s", name, text)
        structlog.get_logger("ours").info(name, detail=text)
        logging.getLogger("uvicorn.error").error('%s - "GET %s" 500', "127.0.0.1:1", text)
    output = stream.getvalue()
    assert "s3cret" not in output
    assert output.count("***") == 3 * len(SECRETS)


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_an_exception_is_logged_with_its_traceback_redacted(log_format: str) -> None:
    stream = io.StringIO()
    configure_logging(log_format, stream=stream)  # type: ignore[arg-type]
    try:
        raise ConnectionError(f"cannot reach {SECRETS['url']}")
    except ConnectionError:
        logging.getLogger("theirs").exception("connecting failed")
    output = stream.getvalue()
    assert "Traceback" in output and "ConnectionError: cannot reach" in output
    assert "s3cret" not in output
    if log_format == "json":
        assert "ConnectionError" in orjson.loads(lines(stream)[0])["exception"]


def test_websocket_chatter_is_debug() -> None:
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    chatter = logging.getLogger("uvicorn.error")
    chatter.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", "/conversations/c1/stream")
    chatter.info("connection open")
    chatter.info("connection closed")
    chatter.error("Exception in ASGI application")
    records = [orjson.loads(line) for line in lines(stream)]
    assert [record["event"] for record in records] == ["Exception in ASGI application"]

    stream = io.StringIO()
    configure_logging("json", level="DEBUG", stream=stream)
    logging.getLogger("uvicorn.error").info("connection open")
    assert orjson.loads(lines(stream)[0])["level"] == "debug"
