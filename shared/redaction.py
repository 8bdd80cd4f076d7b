"""Secrets out of log lines: tokens in URLs and headers, passwords in connection strings.

One function, `redact`, for any text about to be logged; `RedactSecrets` applies it to every
record a logging handler emits (uvicorn's access log prints query strings, `access_token` too).
"""

import logging
import re

HIDDEN = "***"
PATTERNS = (
    # ?access_token=... (a browser's WebSocket), and the other usual names for a secret in a URL
    re.compile(
        r"(?i)([?&;](?:access_token|id_token|refresh_token|token|api_key|apikey|key|password)=)"
        r"[^&;#\s\"']*"
    ),
    # Authorization: Bearer <token>
    re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9._~+/=-]+"),
    # scheme://user:password@host
    re.compile(r"(://[^/\s:@]*:)[^@\s/]+(?=@)"),
    # an OpenAI-style key wherever it appears
    re.compile(r"()\bsk-[A-Za-z0-9_-]{8,}"),
)


def redact(text: str) -> str:
    for pattern in PATTERNS:
        text = pattern.sub(lambda match: match.group(1) + HIDDEN, text)
    return text


class RedactSecrets(logging.Filter):
    """A handler filter: redacts the message and its arguments, keeping their shape."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                name: redact(arg) if isinstance(arg, str) else arg
                for name, arg in record.args.items()
            }
        return True
