"""Gossip settings every site of a consortium must share.

They live in the consortium file (the `[gossip]` table, gossipmed.consortium.roster) and enter the
roster hash that every envelope carries, so a site configured differently is refused by its
neighbours and refuses them, instead of misreading their exchange numbers or mixing with
weights that no longer sum to one across the graph. The simulator reads the same settings
from its `[consortium]` table.

    gossip_steps   exchanges (send-and-mix steps) per round; 0 = auto: the fewest that
                   shrink disagreement to 0.2 per round given the graph's lambda2
    mixing         how mixing weights follow from the graph (topology.mixing)
    secure_aggregation
                   true: each site learns only the weighted sum of its neighbours' states
                   (gossipmed.mixing.secagg); forces one exchange per round (gossip_steps 0
                   resolves to 1, any other value is refused: several exchanges of the same
                   round-start states are public linear maps that reveal individual states)
    secagg_rms     the public norm envelope: the largest RMS per coordinate one contribution
                   carries (a larger state is scaled down to it). The fixed-point encoding
                   follows from it and the adapter's size by a public formula
                   (gossipmed.mixing.secagg.envelope): L2 clip rho * sqrt(d), coordinate
                   clip min(that, 16 rho), 32-bit words; the receiver checks its sum against
                   W * both. Only meaningful (and only written) when secure aggregation is on
    task           the task every site trains (gossipmed.consortium.task): format, template
                   and its version, max_length, scoring; a site whose own configuration gives
                   another digest is refused at start

The secure-aggregation keys enter the mapping (and so the roster hash) only when it is on, and
the task only when it is not the default label task, so the hash of every consortium file
written before they existed is unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gossipmed.consortium.task import DEFAULT_TASK, TaskDigest
from gossipmed.errors import ConfigError
from gossipmed.mixing.secagg.envelope import NormEnvelope
from gossipmed.wire.round_limits import MAX_STEPS_PER_ROUND
from topology.mixing import DEFAULT_RULE as DEFAULT_MIXING
from topology.mixing import RULES as MIXING_RULES
from topology.spectral import gossip_steps_for

AUTO_GOSSIP_STEPS = 0
_SECAGG_KEYS = ("secagg_rms",)
DEFAULT_SECAGG_RMS = 4.0
"""Loose enough for the simulator's quadratic states (RMS about 1); a LoRA consortium
should set it near its adapters' scale (a few times their RMS), which is what bounds a
dishonest contributor."""


@dataclass(frozen=True)
class ConsortiumSettings:
    gossip_steps: int = AUTO_GOSSIP_STEPS
    """Exchanges (send-and-mix steps) per round; 0 = auto: the fewest that shrink disagreement to
    0.2 per round given the graph."""
    mixing: str = DEFAULT_MIXING
    """How mixing weights follow from the graph: "metropolis-hastings" or "best-constant"."""
    secure_aggregation: bool = False
    """true: each site learns only the weighted sum of its neighbours' states (one exchange per
    round)."""
    secagg_rms: float = DEFAULT_SECAGG_RMS
    """The public norm envelope of secure aggregation: the largest RMS per coordinate one
    contribution carries; only with secure_aggregation = true."""
    task: TaskDigest = DEFAULT_TASK
    """The task every site trains (format, template and its version, max_length, scoring),
    written by `gossipmed consortium build --task`; a site whose own configuration gives
    another digest is refused at start. Omitted: the label task."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", TaskDigest.from_mapping(self.task, where="gossip"))
        if type(self.gossip_steps) is not int or not (
            0 <= self.gossip_steps <= MAX_STEPS_PER_ROUND
        ):
            raise ConfigError(f"gossip_steps must be 0 (auto) or 1..{MAX_STEPS_PER_ROUND}")
        if self.mixing not in MIXING_RULES:
            raise ConfigError(f"mixing must be one of {', '.join(MIXING_RULES)}")
        if type(self.secure_aggregation) is not bool:
            raise ConfigError("secure_aggregation must be true or false")
        self.envelope  # noqa: B018  (validated here, built where it is used)
        if not self.secure_aggregation:
            defaults = [
                k for k in _SECAGG_KEYS if getattr(self, k) != getattr(ConsortiumSettings, k)
            ]
            if defaults:
                raise ConfigError(
                    f"{', '.join(defaults)} only apply with secure_aggregation = true"
                )
            return
        if self.gossip_steps not in (AUTO_GOSSIP_STEPS, 1):
            raise ConfigError(
                f"secure_aggregation allows one exchange per round, not gossip_steps = "
                f"{self.gossip_steps}: sums of several exchanges of the same round-start "
                f"states reveal individual states"
            )
        object.__setattr__(self, "gossip_steps", 1)
        object.__setattr__(self, "secagg_rms", float(self.secagg_rms))

    @property
    def envelope(self) -> NormEnvelope:
        """The public norm envelope; `.fixed_point(coords)` is the exchange's encoding."""
        try:
            return NormEnvelope(self.secagg_rms)
        except ConfigError as exc:
            raise ConfigError(f"secure aggregation: {exc}") from None

    @classmethod
    def from_mapping(
        cls, raw: Mapping[str, Any], *, where: str, task: bool = True
    ) -> ConsortiumSettings:
        """`task=False` where the task comes from elsewhere (a simulation's [data])."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a table")
        if not task and "task" in raw:
            raise ConfigError(f"{where} has no task: a simulation trains the task of its [data]")
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
        out: dict[str, Any] = {"gossip_steps": self.gossip_steps, "mixing": self.mixing}
        if self.secure_aggregation:
            out["secure_aggregation"] = True
            out["secagg_rms"] = float(self.secagg_rms)
        if self.task != DEFAULT_TASK:
            out["task"] = self.task.to_mapping()
        return out


def resolve_gossip_steps(setting: int, *, lam2: float) -> int:
    """Exchanges per round: `setting`, or for 0 (auto) the fewest that shrink disagreement to
    topology.spectral.AUTO_CONTRACTION given lambda2, so every site that reads the same
    graph picks the same number."""
    if setting == AUTO_GOSSIP_STEPS:
        return gossip_steps_for(lam2)
    if type(setting) is not int or not 1 <= setting <= MAX_STEPS_PER_ROUND:
        raise ConfigError(f"gossip_steps must be 0 (auto) or 1..{MAX_STEPS_PER_ROUND}")
    return setting
