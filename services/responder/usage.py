"""A finished reply's usage: the provider's own count where it sent one, else our estimate.

A stopped or failed reply still cost its tokens, and some servers ignore
`stream_options.include_usage`: those replies get an estimate counted offline, marked
`estimated`, with the prompt as the context sent and the completion as the text and reasoning
received.
"""

from typing import Any

from services.responder.tokens import count_tokens
from shared.schemas import FINISH_ERROR, Usage
from shared.store.replies import Ending, StoredReply

FINISHED_WITHOUT_REASON = "stop"
"""A stream that ended with `[DONE]` but no `finish_reason` ended normally."""


def reported_usage(raw: dict[str, Any] | None) -> Usage | None:
    """The provider's `usage` object, if it is a whole one."""
    if raw is None:
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.get("total_tokens")
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total if isinstance(total, int) else prompt + completion,
        estimated=False,
    )


def estimated_usage(prompt_tokens: int, text: str, reasoning: str) -> Usage:
    """Our count for a reply the provider sent no usage for."""
    completion = count_tokens(text) + count_tokens(reasoning)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        total_tokens=prompt_tokens + completion,
        estimated=True,
    )


def final_usage(raw: dict[str, Any] | None, prompt_tokens: int, text: str, reasoning: str) -> Usage:
    return reported_usage(raw) or estimated_usage(prompt_tokens, text, reasoning)


def given_up_ending(reply: StoredReply) -> Ending:
    """A reply failed by giving up on it: an error, its usage estimated from what it holds."""
    message = reply.message
    usage = estimated_usage(reply.prompt_tokens, message.message, message.reasoning or "")
    return Ending(FINISH_ERROR, usage, message.model)
