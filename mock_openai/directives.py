"""Per-request overrides written into the prompt, so a test can script failures by text alone.

Syntax: `[mock tokens=5 delay_ms=0 fail_after=3 hang_after=2 status=500]`, any subset, anywhere
in the last user message; the first such bracket wins.
"""

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

_DIRECTIVE = re.compile(r"\[mock\b([^\]]*)\]")
_FIELDS: dict[str, Callable[[str], int | float]] = {
    "tokens": int,
    "delay_ms": float,
    "fail_after": int,
    "hang_after": int,
    "status": int,
}


class DirectiveError(ValueError):
    """A malformed directive, reported to the caller as a 400 so typos never pass silently."""


Ending = Literal["finish", "fail", "hang"]


@dataclass(frozen=True, slots=True)
class Directives:
    """How to answer one request: the server defaults with the prompt's overrides applied."""

    tokens: int
    delay_ms: float
    fail_after: int | None = None
    hang_after: int | None = None
    status: int | None = None

    @property
    def sent_tokens(self) -> int:
        """How many content tokens go out before the stream ends, fails or hangs."""
        cut = self.fail_after if self.fail_after is not None else self.hang_after
        return self.tokens if cut is None else min(cut, self.tokens)

    @property
    def ending(self) -> Ending:
        """What follows the last content token."""
        if self.fail_after is not None:
            return "fail"
        if self.hang_after is not None:
            return "hang"
        return "finish"


def parse_directives(text: str, defaults: Directives) -> Directives:
    """Apply the `[mock ...]` overrides found in `text` to `defaults`."""
    match = _DIRECTIVE.search(text)
    if match is None:
        return defaults
    overrides: dict[str, Any] = {}
    for item in match.group(1).split():
        name, _, raw = item.partition("=")
        overrides[name] = _parse_value(name, raw)
    if "fail_after" in overrides and "hang_after" in overrides:
        raise DirectiveError("use fail_after or hang_after, not both")
    return replace(defaults, **overrides)


def _parse_value(name: str, raw: str) -> int | float:
    convert = _FIELDS.get(name)
    if convert is None:
        raise DirectiveError(f"unknown mock directive {name!r}")
    try:
        value = convert(raw)
    except ValueError:
        raise DirectiveError(f"{name} needs a number, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise DirectiveError(f"{name} must be a finite number >= 0, got {raw!r}")
    if name == "status" and not 400 <= value <= 599:
        raise DirectiveError(f"status must be an HTTP error code (400-599), got {raw!r}")
    return value
