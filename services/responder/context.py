"""What the model is shown of a conversation, within a token budget."""

from collections.abc import Sequence
from dataclasses import dataclass

from openai.types.chat import ChatCompletionMessageParam

from services.responder.tokens import REPLY_PRIMING, message_tokens
from shared.schemas import Message, Status


@dataclass(frozen=True, slots=True)
class Context:
    """The request's messages and their size in tokens (the prompt, for usage estimates)."""

    messages: list[ChatCompletionMessageParam]
    tokens: int


def build_context(
    path: Sequence[Message],
    system_prompt: str,
    budget: int,
) -> Context:
    """The system prompt, then the turns of `path` that fit `budget` tokens, oldest dropped first.

    `path` runs from the conversation's first message to the new user message, which is last
    and always sent, as is the system prompt, whatever they cost. Earlier turns are kept newest
    first while they fit; a kept history never starts with an answer whose question was dropped.
    Replies that failed or were never written add nothing the model should continue from, and
    earlier replies' reasoning is never sent back.
    """
    turns = [
        message
        for message in path[:-1]
        if message.sender == "user" or (message.status == Status.COMPLETED and message.message)
    ]
    head: list[ChatCompletionMessageParam] = []
    used = REPLY_PRIMING
    if system_prompt:
        head.append({"role": "system", "content": system_prompt})
        used += message_tokens(system_prompt)
    tail: list[ChatCompletionMessageParam] = []
    if path:
        tail.append(_turn(path[-1]))
        used += message_tokens(path[-1].message)
    kept: list[tuple[Message, int]] = []
    for message in reversed(turns):
        size = message_tokens(message.message)
        if used + size > budget:
            break
        used += size
        kept.append((message, size))
    while kept and kept[-1][0].sender == "assistant":
        used -= kept.pop()[1]
    history: list[ChatCompletionMessageParam] = [_turn(message) for message, _ in reversed(kept)]
    return Context(head + history + tail, used)


def _turn(message: Message) -> ChatCompletionMessageParam:
    if message.sender == "user":
        return {"role": "user", "content": message.message}
    return {"role": "assistant", "content": message.message}
