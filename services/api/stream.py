"""The WebSocket stream of a conversation: refused or accepted, then relayed from the hub."""

import asyncio
import contextlib

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pymongo.errors import PyMongoError
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
from services.api.limits import TooManySockets
from services.api.metrics import REFUSED_WEBSOCKETS, SUBSCRIBERS_DROPPED
from services.api.origins import websocket_origin_allowed
from services.api.routes import CONVERSATION_ID, RuntimeDep, UserLimits
from shared.keys import ConversationKey

TRY_AGAIN_LATER = 1013
POLICY_VIOLATION = 1008
INTERNAL_ERROR = 1011
TOKEN_EXPIRED = 4401
SLOW_CLIENT_CLOSE_SECONDS = 5.0

router = APIRouter()


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
            REFUSED_WEBSOCKETS.inc()
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
