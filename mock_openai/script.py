"""The deterministic reply text, importable so callers can predict what the mock will say."""

import re
from hashlib import blake2b

VOCABULARY: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "green", "light", "quick", "brown",
    "small", "north", "quiet", "metal", "paper", "glass", "sugar", "ocean",
    "tiger", "maple", "cedar", "amber", "coral", "delta", "ember", "frost",
    "grain", "honey", "ivory", "jolly", "karma", "lemon", "mango", "noble",
    "olive", "pearl", "quill", "raven", "sable", "tulip", "umber", "vivid",
    "wheat", "xenon", "yield", "zebra", "alpha", "bravo", "charm", "dream",
    "eagle", "flame", "grove", "haven", "index", "jewel", "kiosk", "lunar",
    "mirth", "nylon", "orbit", "prism", "quota", "ridge", "solar", "torch",
)  # fmt: skip
_TOKENS = tuple(word + " " for word in VOCABULARY)  # shared strings: the logs keep every token
_REASONING_SALT = "reasoning:"
_WORD = re.compile(r"\S+\s*|\s+")


def reply_tokens(key: str, attempt: int, count: int) -> list[str]:
    """Return the `count` tokens the mock streams for `key` (last user text) on `attempt`.

    Each token is a vocabulary word plus a trailing space, picked by blake2b over
    (digest of key, attempt, index): stable across processes, unlike the salted `hash()`,
    and different per attempt so a retried request gets a visibly different reply.
    """
    key_digest = blake2b(key.encode()).digest()
    tokens = []
    for index in range(count):
        digest = blake2b(b"%s%d:%d" % (key_digest, attempt, index), digest_size=8).digest()
        tokens.append(_TOKENS[int.from_bytes(digest) % len(_TOKENS)])
    return tokens


def reasoning_tokens(key: str, attempt: int, count: int) -> list[str]:
    """Return the `count` reasoning tokens streamed before the reply: other words than the text."""
    return reply_tokens(_REASONING_SALT + key, attempt, count)


def text_pieces(text: str) -> list[str]:
    """A given text as the mock streams it: each word with the whitespace after it."""
    return _WORD.findall(text)
