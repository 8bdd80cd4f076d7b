"""Routes of the conversation list: list, read, rename, delete (contract "Conversations")."""

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.api.posting import new_reply
from services.api.responses import PROTECTED, RATE_LIMITED, TOO_LARGE, error, invalid
from services.api.routes import ConversationIdPath, MessageIdPath, Owner, RuntimeDep, UserLimits
from services.api.stopping import stop_replies
from shared.events import conversation_deleted_event
from shared.schemas import (
    FINISHED,
    Busy,
    ChatAccepted,
    Conversation,
    ConversationPage,
    ConversationRename,
)
from shared.store.conversations import Position
from shared.store.turns import ConversationGone, Turn

log = logging.getLogger(__name__)

NOT_FOUND = {**error(404, "No such conversation"), **PROTECTED}


router = APIRouter()


@router.get(
    "/conversations",
    responses={
        **invalid("`limit` out of range, or `before` not a cursor this API gave"),
        **PROTECTED,
    },
)
async def list_conversations(
    runtime: RuntimeDep,
    owner: Owner,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    before: Annotated[str | None, Query(max_length=200, description="a page's `next`")] = None,
) -> ConversationPage:
    """The user's conversations, most recently active first, a page at a time.

    The cursor is a position, not an offset, so a walk through the pages lists each
    conversation at most once, and every one not posted to meanwhile exactly once. One posted
    to meanwhile moves to the top, before the first page: listed once if the walk had passed it,
    not at all if it was still ahead (the first page shows it).
    """
    position = None
    if before is not None:
        try:
            position = Position.decode(before)
        except ValueError as error:
            detail = {"type": "value_error", "loc": ("query", "before"), "msg": str(error)}
            raise RequestValidationError([detail]) from error
    conversations, following = await runtime.conversations.list_conversations(
        owner, limit, position
    )
    return ConversationPage(
        conversations=conversations, next=None if following is None else following.encode()
    )


@router.get("/conversations/{conversation_id}", responses=NOT_FOUND)
async def get_conversation(
    conversation_id: ConversationIdPath, runtime: RuntimeDep, owner: Owner
) -> Conversation:
    conversation = await runtime.conversations.get_conversation(owner, conversation_id)
    if conversation is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {conversation_id} not found")
    return conversation


@router.patch(
    "/conversations/{conversation_id}",
    responses={
        **NOT_FOUND,
        **TOO_LARGE,
        **invalid("`title` missing, empty, only whitespace or over 200 characters"),
    },
)
async def rename_conversation(
    conversation_id: ConversationIdPath,
    body: ConversationRename,
    runtime: RuntimeDep,
    owner: Owner,
) -> Conversation:
    conversation = await runtime.conversations.rename(owner, conversation_id, body.title)
    if conversation is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {conversation_id} not found")
    return conversation


@router.delete(
    "/conversations/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=NOT_FOUND,
)
async def delete_conversation(
    conversation_id: ConversationIdPath, runtime: RuntimeDep, owner: Owner
) -> None:
    """Stop its replies in flight, remove every document of it, then close its streams.

    A reply's responder is stopped through the stop path; whatever it writes afterwards matches
    no document, and its job (or a redelivery of it) finds no reply and is acknowledged. A post
    being stored meanwhile is removed with the rest or refused (404), never left behind.
    """
    await stop_replies(
        runtime, await runtime.conversations.unfinished_replies(owner, conversation_id)
    )
    if not await runtime.conversations.delete(owner, conversation_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {conversation_id} not found")
    try:
        await runtime.announce(conversation_deleted_event(owner, conversation_id))
    except Exception as error:  # it is deleted all the same; its streams end when clients leave
        log.warning("announcing the deletion of %s failed: %s", conversation_id, error)


@router.post(
    "/conversations/{conversation_id}/messages/{message_id}/regenerate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ChatAccepted,
    responses={
        **PROTECTED,
        **RATE_LIMITED,
        **TOO_LARGE,
        **error(404, "No such assistant message in this conversation, or it was deleted"),
        409: {"model": Busy, "description": "That reply is not finished yet"},
    },
)
async def regenerate(
    conversation_id: ConversationIdPath,
    message_id: MessageIdPath,
    runtime: RuntimeDep,
    owner: Owner,
    limits: UserLimits,
) -> ChatAccepted | JSONResponse:
    """A new reply to the same user message, beside the old one, with the same context.

    Counts like `POST /chat` against the user's rate and active replies.
    """
    reply = await runtime.conversations.get_message(owner, conversation_id, message_id)
    question = None
    if reply is not None and reply.sender == "assistant":
        question = await runtime.conversations.question_of(reply)
    if reply is None or question is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"reply {message_id} not found")
    if reply.status not in FINISHED:
        refusal = Busy(detail=f"reply {message_id} is still being written", message_id=reply.id)
        return JSONResponse(refusal.model_dump(mode="json"), status.HTTP_409_CONFLICT)
    turn = Turn(question, new_reply(question), owner, regenerate=True)
    async with limits.new_reply(owner):
        try:
            await runtime.turns.commit(turn, None)
        except ConversationGone as gone:
            raise HTTPException(status.HTTP_404_NOT_FOUND, str(gone)) from gone
    return ChatAccepted(
        conversation_id=conversation_id, user_message_id=question.id, message_id=turn.reply.id
    )
