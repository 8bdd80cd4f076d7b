"""What `POST /chat` and regenerate decide before they store anything: the turn they ask for.

The new user message's parent is checked here (it must be a message of the same conversation),
and so is `ifBusy`, the policy for a conversation whose reply is still unfinished.
"""

import hashlib

import orjson
from fastapi import HTTPException, status
from fastapi.exceptions import RequestValidationError

from services.api.runtime import Runtime
from services.api.stopping import stop_replies
from shared.schemas import ChatRequest, Message, Status, utc_timestamp
from shared.store.documents import new_conversation_id, new_id
from shared.store.turns import ConversationBusy, Turn


def fingerprint(request: ChatRequest) -> str:
    """A hash of the body as sent, so a reused idempotency key is recognised as another request."""
    fields = request.model_dump(mode="json", by_alias=True, exclude_unset=True)
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def prepare_turn(
    runtime: Runtime, owner: str, request: ChatRequest, request_hash: str
) -> Turn:
    """The turn `request` asks for, once its parent and the busy policy allow it.

    Raises 404 for an unknown parent, 422 for a parent of another conversation, and
    `ConversationBusy` for `ifBusy: reject` (checked again once the turn is stored, for posts at
    the same time); `interrupt` stops the replies in flight first.
    """
    conversation_id = request.conversation_id or new_conversation_id()
    turn = new_turn(owner, conversation_id, request.message, request_hash)
    turn.follows_latest = request.follows_latest
    turn.reject_if_busy = request.if_busy == "reject"
    if request.parent_id is not None:
        parent = await runtime.conversations.locate(owner, request.parent_id)
        if parent is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"parent message {request.parent_id} not found"
            )
        if parent.conversation_id != request.conversation_id:
            error = {"type": "value_error", "loc": ("body", "parentId")}
            message = "the parent message belongs to another conversation"
            raise RequestValidationError([{**error, "msg": message}])
        turn.user.parent_id = parent.id
    if request.conversation_id is not None and request.if_busy != "enqueue":
        busy = await runtime.conversations.unfinished_replies(owner, conversation_id)
        if busy and request.if_busy == "reject":
            raise ConversationBusy(busy[0].id)
        await stop_replies(runtime, busy)
    return turn


def new_turn(owner: str, conversation_id: str, text: str, request_hash: str | None) -> Turn:
    """The user's message, stored `completed`, and its reply's empty placeholder."""
    timestamp = utc_timestamp()
    user = Message(
        id=new_id(),
        owner=owner,
        conversation_id=conversation_id,
        sender="user",
        message=text,
        status=Status.COMPLETED,
        timestamp=timestamp,
        seq=0,
    )
    return Turn(user, new_reply(user), owner, request_hash)


def new_reply(user: Message) -> Message:
    """An empty placeholder for a reply to `user`."""
    return user.model_copy(
        update={
            "id": new_id(),
            "sender": "assistant",
            "message": "",
            "status": Status.CREATED,
            "timestamp": utc_timestamp(),
            "parent_id": user.id,
        }
    )
