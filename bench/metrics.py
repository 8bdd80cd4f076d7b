"""Pure statistics: percentiles, and lining up delivered deltas with the tokens the mock sent.

Nothing here does I/O, so the unit tests pin down exactly how lag, loss and duplication are
counted.
"""

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher

_TOKEN = re.compile(r"\S+\s*|\s+")
"""How delivered text is cut back into tokens when it differs from what was sent: the mock's
tokens are one word and a trailing space."""


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks.

    `values` need not be sorted; an empty sequence has no percentile (NaN).
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0-100, got {q}")
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    p50: float
    p95: float
    p99: float
    max: float
    mean: float


def summarize(values: Iterable[float]) -> Summary:
    """Count, p50, p95, p99, max and mean; NaN statistics for no values."""
    ordered = sorted(values)
    if not ordered:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan)
    return Summary(
        count=len(ordered),
        p50=percentile(ordered, 50),
        p95=percentile(ordered, 95),
        p99=percentile(ordered, 99),
        max=ordered[-1],
        mean=math.fsum(ordered) / len(ordered),
    )


@dataclass(frozen=True, slots=True)
class Alignment:
    """When each sent token reached the client (None: never), and what did not match."""

    received_at: list[float | None]
    lost: int
    duplicated: int

    @property
    def delivered(self) -> int:
        return sum(time is not None for time in self.received_at)


def align_tokens(tokens: Sequence[str], pieces: Sequence[tuple[float, str]]) -> Alignment:
    """Give each token of `tokens` the receive time of the piece that completed it.

    `pieces` are (receive time, text) in arrival order: the deltas of one reply, each possibly
    holding several tokens (the responder coalesces them) or, in principle, part of one. A token
    counts as received when the piece holding its last character arrives. When the pieces do not
    rebuild exactly the sent text, the delivered text is cut into tokens and matched against the
    sent ones: tokens missing from it are lost, tokens it has in excess are duplicated.
    """
    expected = "".join(tokens)
    delivered = "".join(text for _, text in pieces)
    if delivered == expected:
        ends = _ends(tokens)
        return Alignment(_times_at(ends, pieces), lost=0, duplicated=0)
    received = [match.group() for match in _TOKEN.finditer(delivered)]
    received_times = _times_at(_ends(received), pieces)
    times: list[float | None] = [None] * len(tokens)
    lost = duplicated = 0
    matcher = SequenceMatcher(None, list(tokens), received, autojunk=False)
    for operation, i1, i2, j1, j2 in matcher.get_opcodes():
        if operation == "equal":
            times[i1:i2] = received_times[j1:j2]
        else:
            lost += i2 - i1
            duplicated += j2 - j1
    return Alignment(times, lost=lost, duplicated=duplicated)


def _ends(parts: Sequence[str]) -> list[int]:
    """Offset just past each part in the parts joined together."""
    ends, offset = [], 0
    for part in parts:
        offset += len(part)
        ends.append(offset)
    return ends


def _times_at(ends: Sequence[int], pieces: Sequence[tuple[float, str]]) -> list[float | None]:
    """For each end offset (non-decreasing), the time of the first piece reaching past it."""
    times: list[float | None] = []
    index, reached = 0, 0
    for end in ends:
        while index < len(pieces) and (reached < end or (reached == 0 and index == 0)):
            reached += len(pieces[index][1])
            index += 1
        times.append(pieces[index - 1][0] if index and reached >= end else None)
    return times


def lags_ms(received_at: Sequence[float | None], emitted: Sequence[float]) -> list[float]:
    """Receive minus emission time of every received token, in milliseconds."""
    return [
        (received - sent) * 1000
        for received, sent in zip(received_at, emitted, strict=False)
        if received is not None
    ]
