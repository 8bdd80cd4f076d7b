"""Offline token counting, for the context budget and for usage estimates.

Why tiktoken with a vendored `o200k_base`: it is OpenAI's own tokenizer, and o200k_base is the
encoding of the default model (gpt-4o-mini) and its successors, so counts are exact there and a
close guide for other models. tiktoken downloads its encoding files at run time, which fails
without internet and would make the responder depend on a third host, so the file ships in
`encodings/`: taken from the MIT-licensed `bpe-openai` wheel (0.1.4) on PyPI, and checked here
against the SHA-256 that tiktoken itself expects for it. Nothing is downloaded, ever.

Counting follows OpenAI's published rule for chat requests: each message costs its text's
tokens plus `MESSAGE_OVERHEAD`, and the request adds `REPLY_PRIMING` for the reply's start.
"""

import base64
import gzip
import hashlib
from functools import cache
from pathlib import Path

import tiktoken

ENCODING_FILE = Path(__file__).with_name("encodings") / "o200k_base.tiktoken.gz"
ENCODING_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
MESSAGE_OVERHEAD = 3
REPLY_PRIMING = 3

# o200k_base's split pattern and special tokens, as tiktoken_ext.openai_public defines them.
_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_SPECIAL_TOKENS = {"<|endoftext|>": 199999, "<|endofprompt|>": 200018}


class EncodingFileError(RuntimeError):
    """The vendored encoding file is missing or not the one tiktoken expects."""


@cache
def encoding() -> tiktoken.Encoding:
    """Load o200k_base from the vendored file, once per process (about 0.2 s)."""
    try:
        data = gzip.decompress(ENCODING_FILE.read_bytes())
    except OSError as error:
        raise EncodingFileError(f"cannot read {ENCODING_FILE}: {error}") from error
    if hashlib.sha256(data).hexdigest() != ENCODING_SHA256:
        raise EncodingFileError(f"{ENCODING_FILE} is not o200k_base: its SHA-256 differs")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        "o200k_base", pat_str=_PATTERN, mergeable_ranks=ranks, special_tokens=_SPECIAL_TOKENS
    )


def count_tokens(text: str) -> int:
    """Tokens in `text`; special-token text written by a user counts as ordinary text."""
    return len(encoding().encode_ordinary(text))


def message_tokens(text: str) -> int:
    """What one chat message with this text costs in a request."""
    return count_tokens(text) + MESSAGE_OVERHEAD
