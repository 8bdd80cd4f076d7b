"""Start-up failures as one line naming the variable to fix, instead of a traceback."""

import sys
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


class DependencyUnavailable(StartupError):
    def __init__(self, variable: str, url: str, cause: BaseException | str) -> None:
        reason = (
            cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}".rstrip(": ")
        )
        super().__init__(f"cannot reach {variable}={redact(url)} ({reason}); check {variable}")


def redact(url: str) -> str:
    """Hide the password of a connection string (or of each in a comma-separated list)."""
    if "," in url:
        return ",".join(redact(part) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def run_service(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except StartupError as error:
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
