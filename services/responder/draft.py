"""A reply being written: tokens gather until the output seals them into the next delta."""

from dataclasses import dataclass

from services.responder.metrics import TOKENS
from shared.events import DeltaEvent, delta_event
from shared.schemas import Message


@dataclass(slots=True)
class Progress:
    """A reply's text and reasoning so far, as the responder hands it to the periodic writer."""

    message_id: str
    attempt: int
    text: str
    reasoning: str
    seq: int


class Draft:
    """`seq` counts sealed deltas, so the stored (text, reasoning, seq) always agrees with the
    stream: one delta may carry text, reasoning or both.

    `closed` once its final text is sealed: the final write is then its worker's, not the
    periodic progress writer's.
    """

    __slots__ = ("_open", "_sealed", "_sealed_thoughts", "_thoughts", "closed", "message", "seq")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.seq = 0
        self.closed = False
        self._sealed: list[str] = []
        self._open: list[str] = []
        self._sealed_thoughts: list[str] = []
        self._thoughts: list[str] = []

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def attempt(self) -> int:
        return self.message.attempt

    def append(self, text: str, reasoning: str = "") -> bool:
        """Add a piece of text and/or reasoning; True if it is the first since the last seal."""
        first = not self._open and not self._thoughts
        if text:
            self._open.append(text)
        if reasoning:
            self._thoughts.append(reasoning)
        return first

    def seal(self) -> DeltaEvent | None:
        """Turn the text and reasoning gathered since the last delta into the next one."""
        if not self._open and not self._thoughts:
            return None
        TOKENS.inc(len(self._open))
        text = "".join(self._open)
        self._open.clear()
        self._sealed.append(text)
        reasoning = ""
        if self._thoughts:
            reasoning = "".join(self._thoughts)
            self._thoughts.clear()
            self._sealed_thoughts.append(reasoning)
        self.seq += 1
        message = self.message
        return delta_event(
            message.owner, message.conversation_id, self.id, self.attempt, self.seq, text, reasoning
        )

    def progress(self) -> Progress:
        if len(self._sealed) > 1:
            self._sealed = ["".join(self._sealed)]
        if len(self._sealed_thoughts) > 1:
            self._sealed_thoughts = ["".join(self._sealed_thoughts)]
        return Progress(
            self.id,
            self.attempt,
            "".join(self._sealed),
            "".join(self._sealed_thoughts),
            self.seq,
        )
