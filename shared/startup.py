"""Start-up failures as one line naming the variable to fix, instead of a traceback."""

import sys
from collections.abc import Callable

from shared.redaction import redact


class StartupError(Exception):
    """The service cannot start; the message says what to fix."""


class DependencyUnavailable(StartupError):
    def __init__(self, variable: str, url: str, cause: BaseException | str) -> None:
        reason = (
            cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}".rstrip(": ")
        )
        super().__init__(f"cannot reach {variable}={redact(url)} ({reason}); check {variable}")


class ConfigurationInvalid(StartupError):
    """A setting the service cannot start with; the message names the variable."""


def run_service(name: str, main: Callable[[], None]) -> None:
    try:
        main()
    except StartupError as error:
        print(f"{name}: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        pass
