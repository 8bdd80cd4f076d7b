"""When the relay counts as deaf: a probe of a silent fanout that nothing answers in time."""

import time

import pytest

from services.api.hearing import Hearing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "monotonic", fake)
    return fake


def test_a_busy_fanout_is_never_probed_and_never_deaf(clock: Clock) -> None:
    hearing = Hearing(deaf_after=10)
    for _ in range(100):
        clock.now += 1
        hearing.heard()
        assert not hearing.should_probe()
        assert not hearing.deaf


def test_silence_alone_is_not_deafness(clock: Clock) -> None:
    hearing = Hearing(deaf_after=10)
    clock.now += 60
    assert hearing.should_probe(), "a silent fanout is probed"
    assert not hearing.deaf


def test_an_unanswered_probe_makes_it_deaf_then_due_for_a_new_binding(clock: Clock) -> None:
    hearing = Hearing(deaf_after=10)
    clock.now += 5
    hearing.probed()
    assert not hearing.should_probe(), "one probe at a time"
    clock.now += 10.5
    assert hearing.deaf and not hearing.deaf_for_long
    clock.now += 5
    assert hearing.deaf_for_long
    hearing.forget_probe()
    assert not hearing.deaf


def test_hearing_anything_after_the_probe_answers_it(clock: Clock) -> None:
    hearing = Hearing(deaf_after=10)
    clock.now += 5
    hearing.probed()
    clock.now += 0.01
    hearing.heard()
    clock.now += 30
    assert not hearing.deaf
