"""build_context: what the model is shown of a conversation, within its token budget.

Costs with the vendored o200k_base: a message is its tokens + 3, a request adds 3 for the
reply. "Be brief." is 3 tokens; "one", "two", "three" 1 each; "reply one", "reply two" 2 each.
"""

import gzip
from pathlib import Path

import pytest

from services.responder import tokens
from services.responder.context import build_context
from services.responder.tokens import EncodingFileError, count_tokens
from shared.schemas import Message, Status
from tests.factories import message

SYSTEM = "Be brief."
CONVERSATION = [
    message("user", "one"),  # 4
    message("assistant", "reply one"),  # 5
    message("user", "two"),  # 4
    message("assistant", "reply two"),  # 5
    message("user", "three"),  # 4, the new message
]
WHOLE = 3 + 6 + 4 + 5 + 4 + 5 + 4


def _roles_and_texts(budget: int, path: list[Message] = CONVERSATION) -> list[tuple[str, str]]:
    return [
        (turn["role"], str(turn["content"]))
        for turn in build_context(path, SYSTEM, budget).messages
    ]


def test_counts_are_o200k_base() -> None:
    assert [count_tokens(text) for text in ("Be brief.", "reply one", "three")] == [3, 2, 1]
    assert count_tokens("You are a helpful assistant.") == 6
    assert count_tokens("<|endoftext|>") == 7  # a user's special-token text is plain text


def test_everything_fits_at_exactly_the_budget() -> None:
    context = build_context(CONVERSATION, SYSTEM, WHOLE)
    assert context.tokens == WHOLE == 31
    assert [(turn["role"], turn["content"]) for turn in context.messages] == [
        ("system", SYSTEM),
        ("user", "one"),
        ("assistant", "reply one"),
        ("user", "two"),
        ("assistant", "reply two"),
        ("user", "three"),
    ]


def test_one_token_short_drops_the_oldest_turn_with_its_answer() -> None:
    context = build_context(CONVERSATION, SYSTEM, WHOLE - 1)
    assert [turn["content"] for turn in context.messages] == [SYSTEM, "two", "reply two", "three"]
    assert context.tokens == 22
    assert _roles_and_texts(22) == _roles_and_texts(WHOLE - 1)


def test_below_the_last_turn_only_system_and_new_message_remain() -> None:
    assert [text for _, text in _roles_and_texts(21)] == [SYSTEM, "three"]
    assert build_context(CONVERSATION, SYSTEM, 21).tokens == 13


def test_new_message_and_system_prompt_are_sent_over_any_budget() -> None:
    context = build_context(CONVERSATION, SYSTEM, 1)
    assert [turn["content"] for turn in context.messages] == [SYSTEM, "three"]
    assert context.tokens == 13


def test_a_turn_that_does_not_fit_stops_the_walk_back() -> None:
    path = [
        message("user", "one"),  # 4: would fit on its own
        message("assistant", "word " * 50),  # 53
        message("user", "two"),  # 4
        message("assistant", "reply two"),  # 5
        message("user", "three"),  # 4
    ]
    budget = 3 + 6 + 4 + 5 + 4 + 4  # room for "one" but not for the long reply
    assert [text for _, text in _roles_and_texts(budget, path)] == [
        SYSTEM,
        "two",
        "reply two",
        "three",
    ]


def test_empty_system_prompt_adds_no_system_turn() -> None:
    context = build_context([message("user", "hi")], "", 8000)
    assert context.messages == [{"role": "user", "content": "hi"}]
    assert context.tokens == 3 + 4


def test_failed_empty_and_unfinished_replies_are_left_out_and_not_counted() -> None:
    path = [
        message("user", "one"),
        message("assistant", "half a rep", Status.FAILED, error="model API failed"),
        message("user", "two"),
        message("assistant", "", Status.COMPLETED),
        message("user", "three"),
        message("assistant", "still writ", Status.STREAMING, seq=2),
        message("assistant", "", Status.CREATED),
        message("user", "four"),
    ]
    context = build_context(path, SYSTEM, 3 + 6 + 4 * 4)
    assert [turn["content"] for turn in context.messages] == [SYSTEM, "one", "two", "three", "four"]
    assert context.tokens == 25


def test_text_is_passed_verbatim() -> None:
    text = "  leading and trailing spaces, [mock tokens=3], unicode \u00e9\u4e2d  "
    assert build_context([message("user", text)], "", 8000).messages[0]["content"] == text


def test_a_wrong_encoding_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "o200k_base.tiktoken.gz"
    wrong.write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    monkeypatch.setattr(tokens, "ENCODING_FILE", wrong)
    with pytest.raises(EncodingFileError, match="SHA-256"):
        tokens.encoding.__wrapped__()
    monkeypatch.setattr(tokens, "ENCODING_FILE", tmp_path / "missing.gz")
    with pytest.raises(EncodingFileError, match="cannot read"):
        tokens.encoding.__wrapped__()
