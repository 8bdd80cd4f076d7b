"""Draft: tokens sealed into deltas whose seq the stored progress agrees with."""

from services.responder.draft import Draft
from shared.schemas import Status
from tests.factories import message


def _reply(attempt: int = 1) -> Draft:
    return Draft(
        message("assistant", "", Status.STREAMING, "conv", attempt=attempt, message_id="r1")
    )


def test_nothing_to_seal_gives_no_delta_and_keeps_seq() -> None:
    reply = _reply()
    assert reply.seal() is None
    assert reply.seq == 0
    assert reply.progress().text == ""
    assert reply.progress().seq == 0


def test_each_seal_is_one_delta_of_everything_appended_since() -> None:
    reply = _reply(attempt=2)
    reply.append("a ")
    reply.append("b ")
    first = reply.seal()
    reply.append("c ")
    second = reply.seal()
    assert first == {
        "type": "message.delta",
        "owner": "local",
        "conversationId": "conv",
        "messageId": "r1",
        "seq": 1,
        "delta": "a b ",
        "attempt": 2,
    }
    assert second is not None
    assert (second["seq"], second["delta"]) == (2, "c ")
    assert reply.seal() is None
    assert reply.seq == 2


def test_progress_holds_exactly_the_sealed_text_and_seq() -> None:
    reply = _reply()
    deltas = []
    for tokens in (["x "], ["y ", "z "], ["w "]):
        for token in tokens:
            reply.append(token)
        delta = reply.seal()
        assert delta is not None
        deltas.append(delta)
    reply.append("unsealed ")
    progress = reply.progress()
    assert progress.text == "".join(delta["delta"] for delta in deltas) == "x y z w "
    assert progress.seq == deltas[-1]["seq"] == 3
    assert (progress.message_id, progress.attempt) == ("r1", 1)
    assert reply.progress() == progress, "reading progress twice changes nothing"


def test_progress_after_the_final_seal_includes_the_last_tokens() -> None:
    reply = _reply()
    reply.append("last ")
    assert reply.progress().text == ""
    reply.seal()
    assert reply.progress().text == "last "
    assert reply.progress().seq == 1
