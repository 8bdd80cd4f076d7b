"""HTTP routes of the contract (the WebSocket stream is in `services/api/stream.py`)."""

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from services.api.limits import Limits
from services.api.owner import current_owner
from services.api.posting import fingerprint, prepare_turn
from services.api.responses import (
    NOT_READY,
    PROTECTED,
    RATE_LIMITED,
    TOO_LARGE,
    Readiness,
    error,
    invalid,
)
from services.api.runtime import Runtime
from services.api.stopping import stop_reply as stop_everywhere
from shared.logs import about_message
from shared.schemas import (
    CONVERSATION_ID_PATTERN,
    Busy,
    ChatAccepted,
    ChatRequest,
    ConversationMessages,
    ErrorDetail,
    Message,
)
from shared.store.turns import ConversationBusy, ConversationGone, KeyTaken

CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)


async def get_runtime(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ConversationIdPath = Annotated[str, Path(pattern=CONVERSATION_ID.pattern)]
MessageIdPath = Annotated[str, Path(min_length=1, max_length=64)]
Owner = Annotated[str, Depends(current_owner)]


async def get_limits(connection: HTTPConnection) -> Limits:
    limits: Limits = connection.app.state.limits
    return limits


UserLimits = Annotated[Limits, Depends(get_limits)]

router = APIRouter()


KEY_REUSED = "this Idempotency-Key was used for a different request; send a new key"


@router.post(
    "/chat",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ChatAccepted,
    responses={
        404: {
            "model": ErrorDetail,
            "description": "`parentId` names no message, or the conversation was deleted while "
            "the message was being stored; nothing stored",
        },
        409: {
            "model": Busy,
            "description": "`ifBusy: reject` and a reply of the conversation is unfinished "
            "(`messageId`); nothing is stored",
        },
        **invalid(
            "A field is invalid (named in `loc`: also a `parentId` of another conversation), or "
            "the `Idempotency-Key` was used before for a different request (`loc` names the "
            "header); nothing is stored"
        ),
        **PROTECTED,
        **TOO_LARGE,
        **RATE_LIMITED,
    },
)
async def post_chat(
    body: ChatRequest,
    runtime: RuntimeDep,
    owner: Owner,
    limits: UserLimits,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> ChatAccepted | JSONResponse:
    """Store the message and its reply's placeholder, then queue the reply.

    The message follows `parentId` (default: the conversation's latest message).

    A retried request with the same `Idempotency-Key` gets the first answer, not a second reply.
    A key belongs to its owner and to the request it came with (IETF Idempotency-Key draft):
    reused for a different request, it is refused rather than answered with another's reply.
    """
    request_hash = fingerprint(body)
    turn = None
    if idempotency_key is not None:
        turn = await runtime.turn_store.find_turn(owner, idempotency_key)
    if turn is None:
        try:
            async with limits.new_reply(owner):
                turn = await prepare_turn(runtime, owner, body, request_hash)
                await runtime.turns.commit(turn, idempotency_key)
        except ConversationBusy as busy:
            refusal = Busy(detail=str(busy), message_id=busy.reply_id)
            return JSONResponse(refusal.model_dump(mode="json"), status.HTTP_409_CONFLICT)
        except ConversationGone as gone:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(gone)) from gone
        except KeyTaken:
            turn = await runtime.turn_store.find_turn(owner, idempotency_key or "")
            if turn is None:
                raise
    if turn.request_hash != request_hash:
        error = {"type": "idempotency_key_reused", "loc": ("header", "idempotency-key")}
        raise RequestValidationError([{**error, "msg": KEY_REUSED}])
    about_message(turn.reply.conversation_id, turn.reply.id)
    return ChatAccepted(
        conversation_id=turn.reply.conversation_id,
        user_message_id=turn.user.id,
        message_id=turn.reply.id,
    )


@router.get(
    "/conversations/{conversation_id}/messages",
    responses={
        **error(404, "No such conversation"),
        **invalid("`conversationId` is not 1-64 of A-Z a-z 0-9 _ -"),
        **PROTECTED,
    },
)
async def list_messages(
    conversation_id: ConversationIdPath, runtime: RuntimeDep, owner: Owner
) -> ConversationMessages:
    if not await runtime.conversations.conversation_exists(owner, conversation_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {conversation_id} not found")
    messages = await runtime.conversations.list_messages(owner, conversation_id)
    return ConversationMessages(conversation_id=conversation_id, messages=messages)


@router.get(
    "/conversations/{conversation_id}/messages/{message_id}",
    responses={
        **error(404, "No such message in this conversation"),
        **invalid("`conversationId` or `messageId` is malformed"),
        **PROTECTED,
    },
)
async def get_message(
    conversation_id: ConversationIdPath,
    message_id: MessageIdPath,
    runtime: RuntimeDep,
    owner: Owner,
) -> Message:
    message = await runtime.conversations.get_message(owner, conversation_id, message_id)
    if message is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"message {message_id} not found")
    return message


@router.post(
    "/conversations/{conversation_id}/messages/{message_id}/stop",
    responses={
        **error(404, "No such reply (an assistant message) in this conversation"),
        **invalid("`conversationId` or `messageId` is malformed"),
        **PROTECTED,
        **TOO_LARGE,
    },
)
async def stop_reply(
    conversation_id: ConversationIdPath,
    message_id: MessageIdPath,
    runtime: RuntimeDep,
    owner: Owner,
) -> Message:
    """Stop a reply wherever it is being written; its text so far is kept."""
    reply = await stop_everywhere(runtime, owner, conversation_id, message_id)
    if reply is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"reply {message_id} not found")
    return reply


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses=NOT_READY, response_model=Readiness)
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    if await runtime.ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable"}, status.HTTP_503_SERVICE_UNAVAILABLE)
