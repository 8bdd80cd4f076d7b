"""Per-request overrides written into the prompt, so a test can script a reply by text alone.

Syntax: `[mock tokens=5 delay_ms=0 reasoning=3 finish=length]`, any subset, anywhere in the
last user message; the first such bracket wins. The fields:

- `tokens`, `delay_ms`: content tokens, and the pause before each streamed chunk.
- `reasoning`: reasoning tokens streamed before the content, in `delta.<reasoning_field>`.
- `reasoning_field`: `reasoning_content` (DeepSeek, older vLLM) or `reasoning` (vLLM >= 0.16,
  OpenRouter).
- `finish`: the `finish_reason` of the last chunk (`stop`, `length`, `content_filter`, ...).
- `fail_after`, `hang_after`, `error_after`: after that many content tokens the connection drops,
  the stream hangs, or an `error` object arrives in a `data:` event and the stream ends (at
  most one of the three).
- `status`: answer with this HTTP error status instead of a stream.
- `comments=1`: an SSE comment line (`: OPENROUTER PROCESSING`) before every chunk.
- `empty_choices=1`: a chunk with empty `choices` before every chunk that has one.
- `done=0`: no `data: [DONE]` after the last chunk.
- `usage=0`: ignore `stream_options.include_usage`, as some servers do.
- `text`, `reasoning_text`: the reply (or its reasoning) is this text, percent-encoded (so it
  may hold spaces, `]` or markup: `text=%3Cb%3Ehi%3C%2Fb%3E`), streamed a word at a time, the
  same on every attempt; `tokens` (or `reasoning`) is then its number of words.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import unquote

from mock_openai.script import text_pieces

_DIRECTIVE = re.compile(r"\[mock\b([^\]]*)\]")
_FINISH_REASON = re.compile(r"[a-z_]{1,32}")
REASONING_FIELDS = ("reasoning_content", "reasoning")
_CUTS = ("fail_after", "hang_after", "error_after")
_GIVEN = {"text": "tokens", "reasoning_text": "reasoning"}
"""A given text and the count it sets."""


class DirectiveError(ValueError):
    """A malformed directive, reported to the caller as a 400 so typos never pass silently."""


Ending = Literal["finish", "fail", "hang", "error"]


@dataclass(frozen=True, slots=True)
class Directives:
    """How to answer one request: the server defaults with the prompt's overrides applied."""

    tokens: int
    delay_ms: float
    reasoning: int = 0
    reasoning_field: str = "reasoning_content"
    finish: str = "stop"
    fail_after: int | None = None
    hang_after: int | None = None
    error_after: int | None = None
    status: int | None = None
    comments: bool = False
    empty_choices: bool = False
    done: bool = True
    usage: bool = True
    text: str | None = None
    reasoning_text: str | None = None

    @property
    def cut(self) -> int | None:
        """After how many content tokens the stream fails, hangs or errs (None: it finishes)."""
        for name in _CUTS:
            value: int | None = getattr(self, name)
            if value is not None:
                return value
        return None

    @property
    def sent_tokens(self) -> int:
        """How many content tokens go out before the stream ends, fails, hangs or errs."""
        return self.tokens if self.cut is None else min(self.cut, self.tokens)

    @property
    def ending(self) -> Ending:
        """What follows the last content token."""
        if self.fail_after is not None:
            return "fail"
        if self.hang_after is not None:
            return "hang"
        if self.error_after is not None:
            return "error"
        return "finish"


def parse_directives(text: str, defaults: Directives) -> Directives:
    """Apply the `[mock ...]` overrides found in `text` to `defaults`."""
    match = _DIRECTIVE.search(text)
    if match is None:
        return defaults
    overrides: dict[str, Any] = {}
    for item in match.group(1).split():
        name, _, raw = item.partition("=")
        convert = _FIELDS.get(name)
        if convert is None:
            raise DirectiveError(f"unknown mock directive {name!r}")
        overrides[name] = convert(name, raw)
    if sum(name in overrides for name in _CUTS) > 1:
        raise DirectiveError("use only one of fail_after, hang_after and error_after")
    for given, count in _GIVEN.items():
        if given in overrides:
            if count in overrides:
                raise DirectiveError(f"{given} sets {count}: leave {count} out")
            overrides[count] = len(text_pieces(overrides[given]))
    return replace(defaults, **overrides)


def _number(name: str, raw: str, convert: Callable[[str], float]) -> float:
    try:
        value = convert(raw)
    except ValueError:
        raise DirectiveError(f"{name} needs a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise DirectiveError(f"{name} must be a finite number >= 0, got {raw!r}")
    return value


def _count(name: str, raw: str) -> int:
    return int(_number(name, raw, int))


def _milliseconds(name: str, raw: str) -> float:
    return _number(name, raw, float)


def _status(name: str, raw: str) -> int:
    value = _count(name, raw)
    if not 400 <= value <= 599:
        raise DirectiveError(f"status must be an HTTP error code (400-599), got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    if raw not in ("0", "1"):
        raise DirectiveError(f"{name} must be 0 or 1, got {raw!r}")
    return raw == "1"


def _finish_reason(name: str, raw: str) -> str:
    if not _FINISH_REASON.fullmatch(raw):
        raise DirectiveError(f"{name} must be a word like stop or length, got {raw!r}")
    return raw


def _reasoning_field(name: str, raw: str) -> str:
    if raw not in REASONING_FIELDS:
        raise DirectiveError(f"{name} must be one of {', '.join(REASONING_FIELDS)}, got {raw!r}")
    return raw


def _given_text(name: str, raw: str) -> str:
    try:
        return unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise DirectiveError(f"{name} must be percent-encoded UTF-8, got {raw!r}") from None


_FIELDS: dict[str, Callable[[str, str], Any]] = {
    "tokens": _count,
    "delay_ms": _milliseconds,
    "reasoning": _count,
    "reasoning_field": _reasoning_field,
    "finish": _finish_reason,
    "fail_after": _count,
    "hang_after": _count,
    "error_after": _count,
    "status": _status,
    "comments": _flag,
    "empty_choices": _flag,
    "done": _flag,
    "usage": _flag,
    "text": _given_text,
    "reasoning_text": _given_text,
}
