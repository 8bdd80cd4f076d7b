"""build_context: what the model is shown of a conversation."""

from services.responder.model import build_context
from shared.schemas import Status
from tests.factories import message

SYSTEM = "Be brief."


def test_system_prompt_first_then_turns_oldest_first() -> None:
    history = [
        message("user", "one"),
        message("assistant", "reply one"),
        message("user", "two"),
        message("assistant", "reply two"),
        message("user", "three"),
    ]
    assert build_context(history, SYSTEM) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "reply one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "reply two"},
        {"role": "user", "content": "three"},
    ]


def test_empty_system_prompt_adds_no_system_turn() -> None:
    assert build_context([message("user", "hi")], "") == [{"role": "user", "content": "hi"}]


def test_failed_empty_and_unfinished_replies_are_left_out() -> None:
    history = [
        message("user", "one"),
        message("assistant", "half a rep", Status.FAILED, error="model API failed"),
        message("user", "two"),
        message("assistant", "", Status.COMPLETED),
        message("user", "three"),
        message("assistant", "still writ", Status.STREAMING, seq=2),
        message("assistant", "", Status.CREATED),
        message("user", "four"),
    ]
    assert build_context(history, SYSTEM) == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "user", "content": "three"},
        {"role": "user", "content": "four"},
    ]


def test_text_is_passed_verbatim() -> None:
    text = "  leading and trailing spaces, [mock tokens=3], unicode \u00e9\u4e2d  "
    assert build_context([message("user", text)], "")[0]["content"] == text


def test_no_history_gives_only_the_system_prompt() -> None:
    assert build_context([], SYSTEM) == [{"role": "system", "content": SYSTEM}]
