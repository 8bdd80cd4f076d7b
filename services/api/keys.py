"""What a live subscription is keyed by, defined once for the route, the hub and the replies."""

from typing import Any, NamedTuple


class ConversationKey(NamedTuple):
    """One conversation's subscribers: the events of its messages reach them and no one else.

    A conversation is its owner's: two users with the same conversation id have two.
    """

    owner: str
    conversation_id: str


def key_of(message: dict[str, Any]) -> ConversationKey:
    """The subscribers a message's events go to."""
    return ConversationKey(message["owner"], message["conversationId"])
