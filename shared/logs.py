"""Structured logs: one format for our lines, uvicorn's and every library's, with no secret.

Every record, from structlog or from a plain `logging.getLogger` call, goes through one
stdlib handler whose structlog `ProcessorFormatter` adds the time, level, logger name and the
context bound with `structlog.contextvars` (`requestId`, `conversationId`, `messageId`),
redacts secrets, and renders one JSON object or one text line. LOG_FORMAT picks the renderer;
unset, a terminal gets text and anything else JSON.
"""

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from shared.redaction import redact

LogFormat = Literal["json", "text"]
QUIET_LIBRARIES = {
    "httpx": logging.WARNING,
    "httpx2": logging.WARNING,
    "aio_pika": logging.WARNING,
    "pymongo": logging.INFO,  # its DEBUG is every command and heartbeat
}
SILENT_LIBRARIES = ("aiormq",)  # aio_pika reports what matters
# uvicorn logs every WebSocket handshake at INFO (with its query string): connection chatter.
WEBSOCKET_CHATTER = ('%s - "WebSocket %s"', "connection open", "connection closed")


def redact_secrets(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
    """Tokens in URLs and headers, passwords in connection strings, API keys: hidden."""
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colours
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = redact(value)
    return event


class DemoteWebSocketChatter(logging.Filter):
    """uvicorn's per-socket lines go to DEBUG: a thousand sockets are not a thousand events."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(WEBSOCKET_CHATTER):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def _json(event: MutableMapping[str, Any], **_: Any) -> str:
    return orjson.dumps(event, default=str).decode()


def resolve_format(log_format: LogFormat | None, stream: TextIO) -> LogFormat:
    if log_format is not None:
        return log_format
    return "text" if stream.isatty() else "json"


def configure_logging(
    log_format: LogFormat | None = None, level: str = "INFO", stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to one handler on `stream` (stderr by default)."""
    stream = stream or sys.stderr
    rendered_as = resolve_format(log_format, stream)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if rendered_as == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_json)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty(), sort_keys=False)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # a traceback is text, redacted like the rest
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name, quiet in QUIET_LIBRARIES.items():
        logging.getLogger(name).setLevel(max(quiet, root.level))
    for name in SILENT_LIBRARIES:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True
    chatter = logging.getLogger("uvicorn.error")
    chatter.filters = [f for f in chatter.filters if not isinstance(f, DemoteWebSocketChatter)]
    chatter.addFilter(DemoteWebSocketChatter())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def about_message(conversation_id: str, message_id: str) -> None:
    """From here on in this task (and the tasks it starts), lines name the message."""
    structlog.contextvars.bind_contextvars(conversationId=conversation_id, messageId=message_id)
