"""How long a site waits for each neighbour in an exchange, adapted to recent rounds.

Measured (scripts/bench_straggler.py, docs/benchmarks/deployment.md): with one wait for everybody, a
neighbour slower than the others sets everyone's pace as long as it arrives within
`round_timeout_s`, and costs every neighbour the whole timeout in every round when it does not.
So each neighbour gets its own wait, learnt from when its updates arrived in its last
`window` exchanges (delay after this site sent its own):

    no history yet                 round_timeout_s (what every site waited before)
    arrivals within the allowance  max(floor_s, margin x its slowest recent delay)
    slower than that, or missed    allowance = max(floor_s, own_share x this site's own work)

where "own work" is this site's training and sealing time in the round: a neighbour may make a
site's round at most `own_share` longer than the site's own work (plus `floor_s`), however
slow it is. Every wait is capped at `round_timeout_s`: a neighbour's claims and timing move only
its own wait, never anybody else's, and never beyond the configured timeout. A neighbour that
stops being waited for is not left out: the driver lets a site that finishes training after its
neighbours moved on offer its update in their next round (node.round.driver).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from gossipmed.errors import ConfigError


@dataclass(frozen=True)
class PatienceSettings:
    floor_s: float = 1.0  # shortest wait for a missing neighbour (jitter, a catching-up update)
    margin: float = 2.0  # wait up to margin x a neighbour's slowest recent arrival
    own_share: float = 0.25  # the most a slow neighbour may add, as a share of our own work
    window: int = 4  # exchanges remembered per neighbour

    def __post_init__(self) -> None:
        for name in ("floor_s", "margin", "own_share"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"patience.{name} must be a number")
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"patience.{name} must be a finite number >= 0")
        if self.margin < 1:
            raise ConfigError("patience.margin must be >= 1")
        if type(self.window) is not int or not 1 <= self.window <= 64:
            raise ConfigError("patience.window must be an integer in 1..64")


class Patience:
    """Per-neighbour waits for one site; `heard`/`missed` after each exchange, `wait_s` before."""

    def __init__(self, settings: PatienceSettings | None = None) -> None:
        self.settings = settings or PatienceSettings()
        self._history: dict[str, deque[float | None]] = {}

    def wait_s(self, neighbour: str, *, own_work_s: float, timeout_s: float) -> float:
        """Seconds after sending to wait for `neighbour` in this exchange, at most `timeout_s`
        (the site's round_timeout_s)."""
        history = self._history.get(neighbour)
        if not history:
            return timeout_s
        s = self.settings
        work = own_work_s if math.isfinite(own_work_s) and own_work_s > 0 else 0.0
        allowance = max(s.floor_s, s.own_share * work)
        delays = [d for d in history if d is not None]
        if len(delays) == len(history):
            expected = max(s.floor_s, s.margin * max(delays))
            if expected <= allowance:
                return min(timeout_s, expected)
        return min(timeout_s, allowance)

    def heard(self, neighbour: str, delay_s: float) -> None:
        """`neighbour`'s update arrived `delay_s` after we sent (0: it was already here)."""
        delay = delay_s if math.isfinite(delay_s) and delay_s > 0 else 0.0
        self._remember(neighbour, delay)

    def missed(self, neighbour: str) -> None:
        """Its wait ended and its update had not arrived."""
        self._remember(neighbour, None)

    def _remember(self, neighbour: str, outcome: float | None) -> None:
        history = self._history.setdefault(neighbour, deque(maxlen=self.settings.window))
        history.append(outcome)

    def describe(self, *, own_work_s: float, timeout_s: float) -> dict[str, float]:
        """Each neighbour's current wait, for status pages."""
        return {
            n: self.wait_s(n, own_work_s=own_work_s, timeout_s=timeout_s)
            for n in sorted(self._history)
        }
