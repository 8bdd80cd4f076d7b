"""HTTP and WebSocket routes of the contract."""

import asyncio
import contextlib
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Path, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket

from services.api.auth import (
    AuthUnavailable,
    Identity,
    TokenRejected,
    identify,
    seconds_left,
    unauthorized,
)
from services.api.hub import Subscriber
from services.api.keys import ConversationKey
from services.api.limits import Limits, TooManySockets
from services.api.metrics import SUBSCRIBERS_DROPPED
from services.api.origins import websocket_origin_allowed
from services.api.owner import current_owner
from services.api.posting import ConversationBusy, fingerprint, prepare_turn
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
from services.api.turns import KeyTaken
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

CONVERSATION_ID = re.compile(CONVERSATION_ID_PATTERN)
TRY_AGAIN_LATER = 1013
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TOKEN_EXPIRED = 4401
SLOW_CLIENT_CLOSE_SECONDS = 5.0


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
        404: {"model": ErrorDetail, "description": "`parentId` names no message; nothing stored"},
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
    response_model_exclude_none=True,
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
    response_model_exclude_none=True,
    responses={
        **error(404, "No such reply (an assistant message) in this conversation"),
        **invalid("`conversationId` or `messageId` is malformed"),
        **PROTECTED,
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


@router.websocket("/conversations/{conversation_id}/stream")
async def stream(
    websocket: WebSocket, conversation_id: str, runtime: RuntimeDep, limits: UserLimits
) -> None:
    """Snapshot first, then every change to the conversation, in order.

    Refused before any frame: a foreign `Origin` (HTTP 403), no valid token (HTTP 401, or
    close 4401 where the server cannot answer a handshake with HTTP), too many of the user's
    streams open (close 1008). A token that expires while connected closes it with 4401.
    """
    if not websocket_origin_allowed(websocket, websocket.app.state.cors_origins):
        forbidden = {"detail": "this Origin may not open streams (CORS_ORIGINS)"}
        await _refuse(websocket, JSONResponse(forbidden, 403), POLICY_VIOLATION)
        return
    try:
        identity = await identify(websocket)
    except TokenRejected as rejection:
        await _refuse(websocket, unauthorized(rejection), TOKEN_EXPIRED)
        return
    except AuthUnavailable:
        unavailable = {"detail": "the identity provider's keys are unavailable; try again shortly"}
        await _refuse(websocket, JSONResponse(unavailable, 503), INTERNAL_ERROR)
        return
    if not CONVERSATION_ID.match(conversation_id):
        await websocket.close(code=1008, reason="conversationId must be 1-64 of A-Z a-z 0-9 _ -")
        return
    async with contextlib.AsyncExitStack() as held:
        try:
            await held.enter_async_context(limits.sockets.holding(identity.user))
        except TooManySockets as error:
            await websocket.accept()
            await websocket.close(code=POLICY_VIOLATION, reason=str(error))
            return
        except PyMongoError:
            unavailable = {"detail": "the database is unavailable; try again shortly"}
            await _refuse(websocket, JSONResponse(unavailable, 503), INTERNAL_ERROR)
            return
        await websocket.accept()
        key = ConversationKey(identity.user, conversation_id)
        async with runtime.hub.subscribe(key) as events:
            expired = await _relay(events, websocket, identity)
        if expired:
            await _close(websocket, TOKEN_EXPIRED, "the token expired; reconnect with a new one")
        elif events.overflowed.is_set():
            SUBSCRIBERS_DROPPED.inc()
            await _drop_slow_client(websocket, runtime.hub.capacity)
        elif events.close_code is not None:
            with contextlib.suppress(Exception):  # the client may have left meanwhile
                await websocket.close(code=events.close_code)


async def _refuse(websocket: WebSocket, response: JSONResponse, close_code: int) -> None:
    """Answer the handshake with an HTTP error, or close before any frame if HTTP cannot be."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response)
    else:
        await websocket.accept()
        await websocket.close(code=close_code)


async def _relay(events: Subscriber, websocket: WebSocket, identity: Identity) -> bool:
    """Send the client its frames until it leaves, falls too far behind or its token expires.

    A client that stops reading blocks its send; its overflow still ends the relay. Returns
    whether the token expired.
    """
    tasks = {
        asyncio.create_task(_forward(events, websocket)),
        asyncio.create_task(_closed_by_client(websocket)),
        asyncio.create_task(events.overflowed.wait()),
    }
    left = seconds_left(identity)
    expiry = asyncio.create_task(asyncio.sleep(left if left is not None else float("inf")))
    tasks.add(expiry)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)  # a send to a client that has left
    return expiry in done


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(SLOW_CLIENT_CLOSE_SECONDS):
            await websocket.close(code=code, reason=reason)


async def _drop_slow_client(websocket: WebSocket, capacity: int) -> None:
    """Tell a client that fell behind to reconnect for a fresh snapshot.

    A client that reads nothing at all never takes the close frame; then the server just lets
    go of it, and its socket closes once the kernel has handed over what is buffered.
    """
    await _close(websocket, TRY_AGAIN_LATER, f"fell more than {capacity} events behind; reconnect")


async def _forward(events: Subscriber, websocket: WebSocket) -> None:
    async for frame in events:
        await websocket.send_text(frame)


async def _closed_by_client(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
