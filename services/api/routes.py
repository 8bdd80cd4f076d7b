"""HTTP and WebSocket routes of the contract."""

import asyncio
import contextlib
import re
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, status
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.api.connections import Connections
from services.api.relay import SlowSubscriber, Subscription
from shared.events import CREATED, message_event
from shared.schemas import ChatAccepted, ChatJob, ChatRequest, ConversationMessages, Message
from shared.store import new_id

CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TRY_AGAIN_LATER = 1013


def get_connections(connection: HTTPConnection) -> Connections:
    return connection.app.state.connections


Backends = Annotated[Connections, Depends(get_connections)]
ConversationIdPath = Annotated[str, Path(pattern=CONVERSATION_ID.pattern)]

router = APIRouter()


@router.post("/chat", status_code=status.HTTP_202_ACCEPTED)
async def post_chat(body: ChatRequest, backends: Backends) -> ChatAccepted:
    conversation_id = body.conversation_id or new_id()
    user, reply = await backends.store.open_turn(conversation_id, body.message)
    await backends.publish_turn(
        [message_event(CREATED, user), message_event(CREATED, reply)],
        ChatJob(conversationId=conversation_id, userMessageId=user.id, messageId=reply.id),
    )
    return ChatAccepted(conversationId=conversation_id, userMessageId=user.id, messageId=reply.id)


@router.get("/conversations/{conversation_id}/messages")
async def list_messages(
    conversation_id: ConversationIdPath, backends: Backends
) -> ConversationMessages:
    if not await backends.store.conversation_exists(conversation_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"conversation {conversation_id} not found")
    messages = await backends.store.list_messages(conversation_id)
    return ConversationMessages(conversationId=conversation_id, messages=messages)


@router.get(
    "/conversations/{conversation_id}/messages/{message_id}", response_model_exclude_none=True
)
async def get_message(
    conversation_id: ConversationIdPath, message_id: str, backends: Backends
) -> Message:
    message = await backends.store.get_message(conversation_id, message_id)
    if message is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"message {message_id} not found")
    return message


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(backends: Backends) -> JSONResponse:
    if await backends.ready():
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable"}, status.HTTP_503_SERVICE_UNAVAILABLE)


@router.websocket("/conversations/{conversation_id}/stream")
async def stream(websocket: WebSocket, conversation_id: str, backends: Backends) -> None:
    """Snapshot first, then every change to the conversation, in order."""
    if not CONVERSATION_ID.match(conversation_id):
        await websocket.close(code=1008, reason="conversationId must be 1-64 of A-Z a-z 0-9 _ -")
        return
    await websocket.accept()
    async with backends.hub.subscribe(conversation_id) as subscription:
        await websocket.send_text(await subscription.snapshot())
        forwarding = asyncio.create_task(_forward(subscription, websocket))
        closing = asyncio.create_task(_closed_by_client(websocket))
        done, _ = await asyncio.wait({forwarding, closing}, return_when=asyncio.FIRST_COMPLETED)
        for task in (forwarding, closing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await task
        if forwarding in done and isinstance(forwarding.exception(), SlowSubscriber):
            await websocket.close(code=TRY_AGAIN_LATER, reason="too slow; reconnect for a snapshot")


async def _forward(subscription: Subscription, websocket: WebSocket) -> None:
    async for text in subscription:
        await websocket.send_text(text)


async def _closed_by_client(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
