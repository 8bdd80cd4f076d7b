"""In-memory record of requests and token emissions, the evidence tests and the benchmark read."""

from typing import Any

import orjson

from mock_openai.chat import CompletionRequest

Record = dict[str, Any]


class Journal:
    """Counts attempts per identical request and keeps both logs, newest last."""

    def __init__(self) -> None:
        self._attempts: dict[bytes, int] = {}
        self._requests: list[Record] = []
        self._emissions: list[Record] = []

    def record_request(self, request: CompletionRequest) -> int:
        """Log `request` and return its attempt number: prior sightings of the same messages."""
        identity = orjson.dumps(request.messages, option=orjson.OPT_SORT_KEYS)
        attempt = self._attempts.get(identity, 0)
        self._attempts[identity] = attempt + 1
        self._requests.append(
            {
                "key": request.key,
                "model": request.model,
                "attempt": attempt,
                "messages": request.messages,
            }
        )
        return attempt

    def open_emission(
        self, key: str, attempt: int, tokens: list[str], reasoning: list[str]
    ) -> tuple[list[float], list[float]]:
        """Log a stream about to send `reasoning` then `tokens`; the caller appends each send
        time to the first list returned (content) or the second (reasoning).
        """
        emitted: list[float] = []
        reasoning_emitted: list[float] = []
        self._emissions.append(
            {
                "key": key,
                "attempt": attempt,
                "tokens": tokens,
                "emitted": emitted,
                "reasoning": reasoning,
                "reasoning_emitted": reasoning_emitted,
            }
        )
        return emitted, reasoning_emitted

    def requests(self, contains: str | None = None) -> list[Record]:
        """Requests whose last user message contains `contains` (all when None)."""
        return _matching(self._requests, contains)

    def emissions(self, contains: str | None = None) -> list[Record]:
        """Emission records whose key contains `contains` (all when None)."""
        return _matching(self._emissions, contains)

    def reset(self) -> None:
        """Forget everything, attempts included, so each test starts from attempt 0."""
        self._attempts.clear()
        self._requests.clear()
        self._emissions.clear()


def _matching(records: list[Record], contains: str | None) -> list[Record]:
    if contains is None:
        return list(records)
    return [record for record in records if contains in record["key"]]
