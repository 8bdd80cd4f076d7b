"""Messages for unit tests, built with the project's own model so they stay valid."""

import itertools

from shared.schemas import LOCAL_OWNER, Message, Status

_ids = itertools.count(1)


def message(
    sender: str = "user",
    text: str = "hello",
    status: Status = Status.COMPLETED,
    conversation_id: str = "c1",
    seq: int = 0,
    attempt: int = 0,
    error: str | None = None,
    message_id: str | None = None,
    owner: str = LOCAL_OWNER,
) -> Message:
    return Message.model_validate(
        {
            "id": message_id or f"m{next(_ids)}",
            "owner": owner,
            "conversationId": conversation_id,
            "from": sender,
            "message": text,
            "status": status,
            "timestamp": "2026-01-01T00:00:00.000Z",
            "seq": seq,
            "attempt": attempt,
            "error": error,
        }
    )
