"""What `POST /chat` builds before it stores anything: the turn it asks for, and its fingerprint."""

import hashlib

import orjson

from shared.schemas import ChatRequest, Message, Status, utc_timestamp
from shared.store.documents import new_id
from shared.store.turns import Turn


def fingerprint(request: ChatRequest) -> str:
    """A hash of every body field, so a reused idempotency key is recognised as another request."""
    fields = request.model_dump(mode="json", by_alias=True)
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def new_turn(owner: str, conversation_id: str, text: str, request_hash: str) -> Turn:
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
    return Turn(user, reply, owner, request_hash)
