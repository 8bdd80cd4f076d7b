"""Messages form a tree: parentId, branches and their context, regenerate, and ifBusy."""

import asyncio
import itertools
from typing import Any

import pytest

from shared.schemas import ChatAccepted, Message, Status
from shared.store.database import Database
from tests.clients import Subscriber
from tests.helpers import (
    ApiClient,
    MockClient,
    eventually,
    expected_reply,
    new_conversation_id,
    prompt,
)

TOKENS = 3


async def _post(api: ApiClient, body: dict[str, Any]) -> ChatAccepted:
    response = await api.http.post("/chat", json=body)
    assert response.status_code == 202, response.text
    return ChatAccepted.model_validate(response.json())


async def _context(mock: MockClient, text: str) -> list[list[tuple[str, str]]]:
    """The (role, content) turns the model was sent, per request whose last user text is `text`."""
    return [
        [
            (turn["role"], turn["content"])
            for turn in request["messages"]
            if turn["role"] != "system"
        ]
        for request in await mock.requests(text)
    ]


async def _by_id(api: ApiClient, conversation_id: str) -> dict[str, Message]:
    return {m.id: m for m in (await api.conversation(conversation_id)).messages}


async def test_every_message_has_its_parent_and_the_default_is_the_latest(api: ApiClient) -> None:
    conversation_id = new_conversation_id()
    first, _ = await api.ask(prompt("one", tokens=TOKENS), conversation_id)
    second, _ = await api.ask(prompt("two", tokens=TOKENS), conversation_id)

    messages = await _by_id(api, conversation_id)

    assert messages[first.user_message_id].parent_id is None
    assert messages[first.message_id].parent_id == first.user_message_id
    assert messages[second.user_message_id].parent_id == first.message_id
    assert messages[second.message_id].parent_id == second.user_message_id
    raw = await api.http.get(f"/conversations/{conversation_id}/messages")
    assert all("parentId" in message for message in raw.json()["messages"])
    alone = await api.http.get(f"/conversations/{conversation_id}/messages/{first.user_message_id}")
    assert alone.json().get("parentId", "left out") is None, "null, as in lists and events"


async def test_a_branch_answers_from_its_own_path(api: ApiClient, mock: MockClient) -> None:
    """Editing the second question branches after the first answer: the new reply's context is
    the first exchange and the edited question, not the question it replaces."""
    conversation_id = new_conversation_id()
    first, first_reply = await api.ask(prompt("first", tokens=TOKENS), conversation_id)
    original, _ = await api.ask(prompt("original second", tokens=TOKENS), conversation_id)
    first_text = (await _by_id(api, conversation_id))[first.user_message_id].message

    edited_text = prompt("edited second", tokens=TOKENS)
    edited = await _post(
        api,
        {"message": edited_text, "conversationId": conversation_id, "parentId": first.message_id},
    )
    await api.finished(conversation_id, edited.message_id)

    messages = await _by_id(api, conversation_id)
    assert messages[edited.user_message_id].parent_id == first.message_id
    assert messages[original.user_message_id].parent_id == first.message_id  # siblings
    assert await _context(mock, edited_text) == [
        [("user", first_text), ("assistant", first_reply.message), ("user", edited_text)]
    ]
    follow_up = prompt("after the edit", tokens=TOKENS)
    after = await _post(api, {"message": follow_up, "conversationId": conversation_id})
    assert (await api.finished(conversation_id, after.message_id)).status == Status.COMPLETED
    edited_reply = (await _by_id(api, conversation_id))[edited.message_id]
    assert (await _by_id(api, conversation_id))[after.user_message_id].parent_id == edited_reply.id
    (context,) = await _context(mock, follow_up)
    assert context[-3:] == [
        ("user", edited_text),
        ("assistant", edited_reply.message),
        ("user", follow_up),
    ]


async def test_replies_on_other_branches_wait_their_turn_in_creation_order(
    api: ApiClient, api_b: ApiClient, mock: MockClient
) -> None:
    """While a reply streams, an edit of the question it answers (another branch, posted on the
    other instance) and a follow-up to the streaming reply itself are accepted: the three
    replies are written one at a time, in creation order, each from its own branch's path."""
    conversation_id = new_conversation_id()
    first, first_reply = await api.ask(prompt("first", tokens=TOKENS), conversation_id)
    first_text = (await _by_id(api, conversation_id))[first.user_message_id].message
    long_text = prompt("long", tokens=30, delay_ms=20)
    edit_text = prompt("edited long", tokens=TOKENS)
    follow_text = prompt("follow-up", tokens=TOKENS)
    async with Subscriber.open(api.ws_url, conversation_id) as subscriber:
        long = await _post(api, {"message": long_text, "conversationId": conversation_id})
        await subscriber.until(lambda s: s.seq(long.message_id) >= 1, what="the long reply")
        edit = await _post(
            api_b,
            {"message": edit_text, "conversationId": conversation_id, "parentId": first.message_id},
        )
        follow = await _post(
            api,
            {
                "message": follow_text,
                "conversationId": conversation_id,
                "parentId": long.message_id,
            },
        )
        streaming = await api.message(conversation_id, long.message_id)
        assert streaming.status == Status.STREAMING, "precondition: posted while it streams"
        replies = [long.message_id, edit.message_id, follow.message_id]
        for reply_id in replies:
            await subscriber.until_finished(reply_id, timeout=30)

    timeline = subscriber.timeline()
    for earlier, following in itertools.pairwise(replies):
        ended = timeline.index(("message.completed", earlier, None))
        started = timeline.index(("message.updated", following, None))
        assert ended < started, f"reply {following} started before {earlier} completed"
    long_reply = subscriber.text(long.message_id)
    assert await _context(mock, edit_text) == [
        [("user", first_text), ("assistant", first_reply.message), ("user", edit_text)]
    ]
    assert await _context(mock, follow_text) == [
        [
            ("user", first_text),
            ("assistant", first_reply.message),
            ("user", long_text),
            ("assistant", long_reply),
            ("user", follow_text),
        ]
    ]
    assert long_reply == expected_reply(long_text, 30)


async def test_a_null_parent_starts_a_new_first_message(api: ApiClient, mock: MockClient) -> None:
    conversation_id = new_conversation_id()
    await api.ask(prompt("old start", tokens=TOKENS), conversation_id)
    text = prompt("new start", tokens=TOKENS)
    accepted = await _post(
        api, {"message": text, "conversationId": conversation_id, "parentId": None}
    )
    await api.finished(conversation_id, accepted.message_id)
    assert (await _by_id(api, conversation_id))[accepted.user_message_id].parent_id is None
    assert await _context(mock, text) == [[("user", text)]]


async def test_regenerate_makes_a_sibling_with_the_same_context(
    api: ApiClient, mock: MockClient
) -> None:
    conversation_id = new_conversation_id()
    await api.ask(prompt("context", tokens=TOKENS), conversation_id)
    text = prompt("regenerate me", tokens=TOKENS)
    original, original_reply = await api.ask(text, conversation_id)

    response = await api.http.post(
        f"/conversations/{conversation_id}/messages/{original.message_id}/regenerate"
    )

    assert response.status_code == 202, response.text
    again = ChatAccepted.model_validate(response.json())
    assert again.conversation_id == conversation_id
    assert again.user_message_id == original.user_message_id
    assert again.message_id != original.message_id
    regenerated = await api.finished(conversation_id, again.message_id)
    assert regenerated.status == Status.COMPLETED
    assert regenerated.parent_id == original.user_message_id
    messages = await _by_id(api, conversation_id)
    assert messages[original.message_id] == original_reply  # the old answer is kept
    first_context, second_context = await _context(mock, text)
    assert first_context == second_context


@pytest.mark.parametrize("what", ["unfinished", "user message", "unknown"])
async def test_regenerate_refuses_what_it_cannot_regenerate(api: ApiClient, what: str) -> None:
    conversation_id = new_conversation_id()
    tokens, delay_ms = (400, 20) if what == "unfinished" else (TOKENS, 0)
    accepted = await api.post_chat(
        prompt("target", tokens=tokens, delay_ms=delay_ms), conversation_id
    )
    target = {
        "unfinished": accepted.message_id,
        "user message": accepted.user_message_id,
        "unknown": "0" * 24,
    }[what]
    response = await api.http.post(f"/conversations/{conversation_id}/messages/{target}/regenerate")
    assert response.status_code == (409 if what == "unfinished" else 404)
    if what == "unfinished":
        assert response.json()["messageId"] == accepted.message_id
        await api.http.post(f"/conversations/{conversation_id}/messages/{target}/stop")
    assert len((await api.conversation(conversation_id)).messages) == 2


async def test_a_parent_from_elsewhere_is_refused_and_stores_nothing(
    api: ApiClient, database: Database
) -> None:
    elsewhere, _ = await api.ask(prompt("elsewhere", tokens=TOKENS), new_conversation_id())
    conversation_id = new_conversation_id()
    for parent, expected in ((elsewhere.message_id, 422), ("f" * 24, 404)):
        body = {"message": "hi", "conversationId": conversation_id, "parentId": parent}
        response = await api.http.post("/chat", json=body)
        assert response.status_code == expected, response.text
        if expected == 422:
            assert response.json()["detail"][0]["loc"] == ["body", "parentId"]
    without_conversation = {"message": "hi", "parentId": elsewhere.message_id}
    assert (await api.http.post("/chat", json=without_conversation)).status_code == 422
    assert await database["messages"].count_documents({"conversationId": conversation_id}) == 0
    assert (await api.http.get(f"/conversations/{conversation_id}")).status_code == 404


async def _streaming(api: ApiClient, conversation_id: str) -> ChatAccepted:
    accepted = await api.post_chat(prompt("long", tokens=400, delay_ms=20), conversation_id)

    async def started() -> bool:
        reply = await api.message(conversation_id, accepted.message_id)
        return reply.status == Status.STREAMING and reply.seq > 0

    await eventually(started, what="the long reply to stream")
    return accepted


async def test_if_busy_reject_is_409_with_the_busy_reply_and_stores_nothing(
    api: ApiClient,
) -> None:
    conversation_id = new_conversation_id()
    busy = await _streaming(api, conversation_id)

    body = {"message": "not now", "conversationId": conversation_id, "ifBusy": "reject"}
    response = await api.http.post("/chat", json=body)

    assert response.status_code == 409
    assert response.json()["messageId"] == busy.message_id
    assert len((await api.conversation(conversation_id)).messages) == 2
    await api.http.post(f"/conversations/{conversation_id}/messages/{busy.message_id}/stop")
    idle = await _post(api, {**body, "message": prompt("now", tokens=TOKENS)})
    await api.finished(conversation_id, idle.message_id)


async def test_two_rejecting_posts_at_once_store_one(api: ApiClient) -> None:
    """Both find the conversation idle before storing; once stored, the later one finds the
    earlier one's reply unfinished and is refused with it."""
    conversation_id = new_conversation_id()
    await api.ask(prompt("idle", tokens=TOKENS), conversation_id)
    bodies = [
        {
            "message": prompt("at once", tokens=400, delay_ms=20),
            "conversationId": conversation_id,
            "ifBusy": "reject",
        }
        for _ in range(2)
    ]

    answers = await asyncio.gather(*(api.http.post("/chat", json=body) for body in bodies))

    assert sorted(answer.status_code for answer in answers) == [202, 409]
    (accepted,) = [answer.json() for answer in answers if answer.status_code == 202]
    (refused,) = [answer.json() for answer in answers if answer.status_code == 409]
    assert refused["messageId"] == accepted["messageId"]
    assert len((await api.conversation(conversation_id)).messages) == 4
    stop = f"/conversations/{conversation_id}/messages/{accepted['messageId']}/stop"
    assert (await api.http.post(stop)).status_code == 200


async def test_if_busy_enqueue_answers_after_the_busy_reply(
    api: ApiClient, mock: MockClient
) -> None:
    conversation_id = new_conversation_id()
    first = await api.post_chat(prompt("first", tokens=20, delay_ms=20), conversation_id)
    text = prompt("queued", tokens=TOKENS)
    queued = await _post(
        api, {"message": text, "conversationId": conversation_id, "ifBusy": "enqueue"}
    )

    first_reply = await api.finished(conversation_id, first.message_id)
    await api.finished(conversation_id, queued.message_id)
    (context,) = await _context(mock, text)
    assert context[-2:] == [("assistant", first_reply.message), ("user", text)]


async def test_if_busy_interrupt_stops_the_busy_reply_keeps_its_text_then_answers(
    api: ApiClient, mock: MockClient
) -> None:
    conversation_id = new_conversation_id()
    busy = await _streaming(api, conversation_id)
    text = prompt("interrupting", tokens=TOKENS)

    accepted = await _post(
        api, {"message": text, "conversationId": conversation_id, "ifBusy": "interrupt"}
    )

    stopped = await api.finished(conversation_id, busy.message_id)
    assert (stopped.status, stopped.stopped) == (Status.COMPLETED, True)
    assert stopped.message and stopped.seq < 400
    answered = await api.finished(conversation_id, accepted.message_id)
    assert answered.status == Status.COMPLETED
    (context,) = await _context(mock, text)
    assert context[-2:] == [("assistant", stopped.message), ("user", text)]


async def test_if_busy_interrupt_also_stops_the_reply_queued_behind(
    api: ApiClient, mock: MockClient
) -> None:
    """A reply streams and another waits its turn behind it: interrupting stops both (the
    streaming one keeps its text, the queued one never reaches the model) and the new one runs."""
    conversation_id = new_conversation_id()
    busy = await _streaming(api, conversation_id)
    queued_text = prompt("queued", tokens=TOKENS)
    queued = await _post(api, {"message": queued_text, "conversationId": conversation_id})
    waiting = await api.message(conversation_id, queued.message_id)
    assert waiting.status == Status.CREATED, "precondition: queued behind the streaming reply"
    text = prompt("interrupting both", tokens=TOKENS)

    accepted = await _post(
        api, {"message": text, "conversationId": conversation_id, "ifBusy": "interrupt"}
    )

    stopped = await api.finished(conversation_id, busy.message_id)
    assert (stopped.status, stopped.stopped) == (Status.COMPLETED, True)
    assert stopped.message and stopped.seq < 400
    dropped = await api.finished(conversation_id, queued.message_id)
    assert (dropped.status, dropped.stopped, dropped.message) == (Status.COMPLETED, True, "")
    answered = await api.finished(conversation_id, accepted.message_id)
    assert (answered.status, answered.message) == (Status.COMPLETED, expected_reply(text, TOKENS))
    assert await mock.requests(queued_text) == []
    (context,) = await _context(mock, text)
    assert context[-1] == ("user", text)
