"""Secrets out of log lines: tokens in URLs and headers, passwords in connection strings.

One function, `redact`, for any text about to be logged (shared.logs applies it to every line;
uvicorn's lines print query strings, `access_token` too).
"""

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
