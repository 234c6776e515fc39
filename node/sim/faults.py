"""Fault injection for the simulator: message drops, churn and stragglers.

Every decision is a pure function of (seed, round, site[, recipient]) so two runs with the same
seed drop the same messages whatever order the simulator asks in, and the gossip run and its
baselines see the same faults.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

from gossipmed.errors import ConfigError


@dataclass(frozen=True)
class FaultConfig:
    """Probabilities are per message (drop) or per site and round (offline, straggler).

    A straggler's messages arrive `straggler_delay` simulated seconds after the round starts;
    when that exceeds the sites' `[gossip] round_timeout_s`, recipients have already mixed
    without them, so the envelopes arrive during the next round and are rejected as stale.
    """

    drop_prob: float = 0.0
    """Probability that a message is lost."""
    offline_prob: float = 0.0
    """Probability that a site is offline for a round."""
    straggler_prob: float = 0.0
    """Probability that a site is a straggler for a round."""
    straggler_delay: float = 0.0
    """Simulated seconds after the round starts at which a straggler's messages arrive."""
    seed: int = 0
    """Seed of the fault draws."""

    def __post_init__(self) -> None:
        for name in ("drop_prob", "offline_prob", "straggler_prob"):
            value = getattr(self, name)
            if not (0.0 <= value < 1.0):
                raise ConfigError(f"faults.{name} must be in [0, 1), got {value}")
        for name in ("straggler_delay",):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise ConfigError(f"faults.{name} must be a finite number >= 0, got {value}")

    @property
    def any(self) -> bool:
        return bool(self.drop_prob or self.offline_prob or self.straggler_prob)


class FaultInjector:
    """Answers "is this site offline / slow, is this message lost" deterministically."""

    def __init__(self, config: FaultConfig, *, round_timeout: float) -> None:
        self.config = config
        self.round_timeout = round_timeout

    def _uniform(self, *key: object) -> float:
        digest = hashlib.blake2b(repr((self.config.seed, *key)).encode(), digest_size=8).digest()
        return float(struct.unpack("<Q", digest)[0] >> 11) / float(1 << 53)

    # each test short-cuts a probability of 0: u < 0 never holds, so no draw is needed

    def offline(self, round: int, site: str) -> bool:
        if not self.config.offline_prob:
            return False
        return self._uniform("offline", round, site) < self.config.offline_prob

    def dropped(self, round: int, sender: str, recipient: str, *, step: int = 0) -> bool:
        """Each exchange of a round (gossip_steps > 1) loses messages independently."""
        if not self.config.drop_prob:
            return False
        key = ("drop", round, sender, recipient) + ((step,) if step else ())
        return self._uniform(*key) < self.config.drop_prob

    def delay(self, round: int, sender: str) -> float:
        """Simulated seconds after the round start at which `sender`'s messages arrive."""
        if self.config.straggler_prob and (
            self._uniform("straggler", round, sender) < self.config.straggler_prob
        ):
            return self.config.straggler_delay
        return 0.0

    def late(self, round: int, sender: str) -> bool:
        return self.delay(round, sender) > self.round_timeout
