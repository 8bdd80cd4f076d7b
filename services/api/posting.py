"""What `POST /chat` builds before it stores anything: the turn it asks for."""

from shared.schemas import Message, Status, utc_timestamp
from shared.store.documents import new_id
from shared.store.turns import Turn


def new_turn(conversation_id: str, text: str) -> Turn:
    """The user's message, stored `completed`, and its reply's empty placeholder."""
    timestamp = utc_timestamp()
    user = Message(
        id=new_id(),
        conversationId=conversation_id,
        sender="user",
        message=text,
        status=Status.COMPLETED,
        timestamp=timestamp,
        seq=0,
    )
    reply = user.model_copy(
        update={"id": new_id(), "sender": "assistant", "message": "", "status": Status.CREATED}
    )
    return Turn(user, reply)
