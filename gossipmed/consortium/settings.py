"""Gossip settings every site of a consortium must share.

They live in the consortium file (the `[gossip]` table, gossipmed.consortium.roster) and enter the
roster hash that every envelope carries, so a site configured differently is refused by its
neighbours and refuses them, instead of misreading their exchange numbers or mixing with
weights that no longer sum to one across the graph. The simulator reads the same settings
from its `[consortium]` table.

    gossip_steps   exchanges (send-and-mix steps) per round; 0 = auto: the fewest that
                   shrink disagreement to 0.2 per round given the graph's lambda2
    mixing         how mixing weights follow from the graph (topology.mixing)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gossipmed.errors import ConfigError
from gossipmed.wire.update import MAX_STEPS_PER_ROUND
from topology.mixing import DEFAULT_RULE as DEFAULT_MIXING
from topology.mixing import RULES as MIXING_RULES
from topology.spectral import gossip_steps_for

AUTO_GOSSIP_STEPS = 0


@dataclass(frozen=True)
class ConsortiumSettings:
    gossip_steps: int = AUTO_GOSSIP_STEPS
    mixing: str = DEFAULT_MIXING

    def __post_init__(self) -> None:
        if type(self.gossip_steps) is not int or not (
            0 <= self.gossip_steps <= MAX_STEPS_PER_ROUND
        ):
            raise ConfigError(f"gossip_steps must be 0 (auto) or 1..{MAX_STEPS_PER_ROUND}")
        if self.mixing not in MIXING_RULES:
            raise ConfigError(f"mixing must be one of {', '.join(MIXING_RULES)}")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], *, where: str) -> ConsortiumSettings:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        try:
            return cls(**dict(raw))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_mapping(self) -> dict[str, Any]:
        return {"gossip_steps": self.gossip_steps, "mixing": self.mixing}


def resolve_gossip_steps(setting: int, *, lam2: float) -> int:
    """Exchanges per round: `setting`, or for 0 (auto) the fewest that shrink disagreement to
    topology.spectral.AUTO_CONTRACTION given lambda2, so every site that reads the same
    graph picks the same number."""
    if setting == AUTO_GOSSIP_STEPS:
        return gossip_steps_for(lam2)
    if type(setting) is not int or not 1 <= setting <= MAX_STEPS_PER_ROUND:
        raise ConfigError(f"gossip_steps must be 0 (auto) or 1..{MAX_STEPS_PER_ROUND}")
    return setting
