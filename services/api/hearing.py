"""Whether this API instance still hears the fanout exchange, for readiness.

A relay can go deaf while its broker connection looks healthy: its queue unbound, deleted or
no longer consumed. Silence alone proves nothing (nobody may be chatting), so when the fanout
has been silent for a while the hub publishes a probe, an empty event batch, which every
instance's queue receives: this instance must hear something within `deaf_after` seconds of
its probe, or it is deaf.
"""

import time


class Hearing:
    def __init__(self, deaf_after: float) -> None:
        self.deaf_after = deaf_after
        self.probe_interval = deaf_after / 2
        """How long a silence lasts before a probe goes out, and how often that is checked."""
        self._heard_at = time.monotonic()
        self._probed_at: float | None = None

    def heard(self) -> None:
        """Something arrived on the fanout: this instance hears it."""
        self._heard_at = time.monotonic()

    def should_probe(self) -> bool:
        """Silent for a probe interval, and no probe is waiting for its echo."""
        silent = time.monotonic() - self._heard_at >= self.probe_interval
        return silent and not self._waiting_for_echo()

    def probed(self) -> None:
        if not self._waiting_for_echo():
            self._probed_at = time.monotonic()

    @property
    def deaf(self) -> bool:
        """A probe went out more than `deaf_after` seconds ago and nothing was heard since."""
        return self._unanswered_for() > self.deaf_after

    @property
    def deaf_for_long(self) -> bool:
        """Deaf for half as long again: time to subscribe anew (readiness said so first)."""
        return self._unanswered_for() > self.deaf_after * 1.5

    def forget_probe(self) -> None:
        """After subscribing anew: judge by the next probe, not the lost one."""
        self._probed_at = None

    def _waiting_for_echo(self) -> bool:
        return self._probed_at is not None and self._heard_at < self._probed_at

    def _unanswered_for(self) -> float:
        if self._probed_at is None or not self._waiting_for_echo():
            return 0.0
        return time.monotonic() - self._probed_at
