"""A reply being written: tokens gather until the output seals them into the next delta."""

from dataclasses import dataclass

from services.responder.metrics import TOKENS
from shared.events import DeltaEvent, delta_event
from shared.schemas import Message


@dataclass(slots=True)
class Progress:
    """A reply's text so far, as the responder hands it to the periodic writer."""

    message_id: str
    attempt: int
    text: str
    seq: int


class Draft:
    """`seq` counts sealed deltas, so the stored (text, seq) always agrees with the stream.

    `closed` once its final text is sealed: the final write is then its worker's, not the
    periodic progress writer's.
    """

    __slots__ = ("_open", "_sealed", "closed", "message", "seq")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.seq = 0
        self.closed = False
        self._sealed: list[str] = []
        self._open: list[str] = []

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def attempt(self) -> int:
        return self.message.attempt

    def append(self, token: str) -> bool:
        """Add a token; True if it is the first since the last seal."""
        self._open.append(token)
        return len(self._open) == 1

    def seal(self) -> DeltaEvent | None:
        """Turn the tokens gathered since the last delta into the next one."""
        if not self._open:
            return None
        TOKENS.inc(len(self._open))
        text = "".join(self._open)
        self._open.clear()
        self._sealed.append(text)
        self.seq += 1
        return delta_event(self.message.conversation_id, self.id, self.attempt, self.seq, text)

    def progress(self) -> Progress:
        if len(self._sealed) > 1:
            self._sealed = ["".join(self._sealed)]
        return Progress(self.id, self.attempt, "".join(self._sealed), self.seq)
