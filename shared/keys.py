"""What a conversation is keyed by, defined once for the relay, its routes and the responders."""

from typing import Any, NamedTuple

from shared.schemas import Message


class ConversationKey(NamedTuple):
    """One conversation's subscribers: the events of its messages reach them and no one else.

    A conversation is its owner's: two users with the same conversation id have two.
    """

    owner: str
    conversation_id: str


def key_of(message: dict[str, Any]) -> ConversationKey:
    """The subscribers a message's events go to."""
    return ConversationKey(message["owner"], message["conversationId"])


def key_of_message(message: Message) -> ConversationKey:
    return ConversationKey(message.owner, message.conversation_id)
