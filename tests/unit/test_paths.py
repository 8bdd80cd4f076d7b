"""The context path through a conversation's tree, including messages stored before trees."""

from typing import Any

from shared.store.documents import path_to_message, with_parents
from shared.store.replies import StoredReply


def _document(id: str, sender: str, order: int, **fields: Any) -> dict[str, Any]:
    return {
        "_id": id,
        "conversationId": "c",
        "from": sender,
        "message": id,
        "status": "completed",
        "timestamp": "2026-01-01T00:00:00.000Z",
        "seq": 0,
        "order": order,
        **fields,
    }


def test_messages_stored_before_trees_read_as_one_chain() -> None:
    old = [_document("u1", "user", 1), _document("a1", "assistant", 2)]
    assert [d["parentId"] for d in with_parents(old)] == [None, "u1"]


def test_the_path_follows_parents_and_leaves_other_branches_out() -> None:
    earlier = with_parents(
        [
            _document("u1", "user", 1),  # stored before trees: no parentId
            _document("a1", "assistant", 2),
            _document("u2", "user", 3, parentId="a1"),
            _document("a2", "assistant", 4, parentId="u2"),
            _document("u2b", "user", 5, parentId="a1"),  # an edit of u2: a sibling branch
        ]
    )
    reply = StoredReply.from_document(
        _document("a2b", "assistant", 6, parentId="u2b", userMessageId="u2b", status="created")
    )
    path = path_to_message(reply.user_message_id, earlier)
    assert [message.id for message in path] == ["u1", "a1", "u2b"]
