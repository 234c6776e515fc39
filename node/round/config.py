"""`[gossip]`: one site's own gossip choices, the same table in sim.toml and site.toml.

    aggregation        mixing rule and its parameters: "bounded" (the default), or a table
                       such as { rule = "cosine-clipped", min_cosine = 0.1 }
                       (gossipmed.mixing.rules; "weighted" is the unbounded plain average)
    codec              how this site encodes what it sends: "raw", "fp16", "bf16", "int8", or
                       { name = "topk", fraction = 0.01, refresh_every = 0 }
                       (gossipmed.wire.compression; receivers decode any codec)
    drift              "none" or "d2" (gossipmed.mixing.drift)
    round_timeout_s    how long the site waits for its neighbours in each exchange (the
                       simulator's stragglers are late when slower than this)
    max_future_rounds  envelopes buffered for rounds ahead of this site's
    max_mix_growth     a mix that is not finite or multiplies the state's norm by more than
    norm_floor_rms     this (against at least norm_floor_rms per coordinate) is rolled back
                       and audited, whatever the rule (gossipmed.mixing.bounds)

What every site must agree on (exchanges per round, mixing weights) is not here: it is in the
consortium file (gossipmed.consortium.settings), or the simulator's `[consortium]` table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from gossipmed.choice import Choice, default_choice, parse_choice
from gossipmed.errors import ConfigError
from gossipmed.mixing.bounds import DEFAULT_FLOOR_RMS, DEFAULT_MAX_RATIO, InfluenceBound
from gossipmed.mixing.drift import DRIFT
from gossipmed.mixing.rules import DEFAULT_RULE, RULES
from gossipmed.registry import Registry
from gossipmed.wire.compression import ENCODERS

NAME_KEYS = {"aggregation": "rule", "codec": "name", "drift": "name"}
REGISTRIES: dict[str, Registry[Any]] = {"aggregation": RULES, "codec": ENCODERS, "drift": DRIFT}


@dataclass(frozen=True)
class GossipConfig:
    aggregation: Choice = field(default_factory=lambda: default_choice(RULES, DEFAULT_RULE))
    """Mixing rule: "bounded" (default), "weighted", "median", "trimmed-mean", "clipped",
    "cosine-clipped", or a table such as { rule = "cosine-clipped", min_cosine = 0.1 }."""
    codec: Choice = field(default_factory=lambda: default_choice(ENCODERS, "raw"))
    """How this site encodes what it sends: "raw", "fp16", "bf16", "int8", or { name = "topk",
    fraction = 0.01 }; receivers decode any codec."""
    drift: Choice = field(default_factory=lambda: default_choice(DRIFT, "none"))
    """"none" or "d2" (D² exact diffusion, removes the non-IID bias of gossip with local steps)."""
    round_timeout_s: float = 30.0
    """Seconds a site waits for its neighbours in each exchange before mixing without the late
    ones."""
    max_future_rounds: int = 2
    """Envelopes buffered for rounds ahead of this site's own."""
    max_mix_growth: float = DEFAULT_MAX_RATIO
    """A mix that multiplies the state's norm by more than this is rolled back and audited, whatever
    the rule."""
    norm_floor_rms: float = DEFAULT_FLOOR_RMS
    """The norm the growth check compares against is at least this RMS per coordinate."""

    def __post_init__(self) -> None:
        for key, registry in REGISTRIES.items():
            value = parse_choice(
                registry, getattr(self, key), key=f"gossip.{key}", name_key=NAME_KEYS[key]
            )
            object.__setattr__(self, key, value)
        timeout = self.round_timeout_s
        if isinstance(timeout, bool) or not isinstance(timeout, int | float):
            raise ConfigError("gossip.round_timeout_s must be a number of seconds")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigError("gossip.round_timeout_s must be a positive number")
        if type(self.max_future_rounds) is not int or not 0 <= self.max_future_rounds <= 64:
            raise ConfigError("gossip.max_future_rounds must be an integer in 0..64")
        try:
            self.mix_bound  # noqa: B018  (validated once, where it is built)
        except ConfigError as exc:
            raise ConfigError(f"gossip.{exc}") from None

    @property
    def mix_bound(self) -> InfluenceBound:
        """A mix that is not finite, or grows the state norm past max_mix_growth x
        max(own norm, norm_floor_rms x sqrt(size)), is rolled back (every rule)."""
        return InfluenceBound(max_ratio=self.max_mix_growth, floor_rms=self.norm_floor_rms)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> GossipConfig:
        if not isinstance(raw, Mapping):
            raise ConfigError("[gossip] must be a table")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(
                f"[gossip] has unknown keys: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**dict(raw))

    def to_mapping(self) -> dict[str, Any]:
        """TOML-shaped: a component is its name, or an inline table when it has parameters."""
        return {
            "aggregation": self.aggregation.to_toml(name_key=NAME_KEYS["aggregation"]),
            "codec": self.codec.to_toml(name_key=NAME_KEYS["codec"]),
            "drift": self.drift.to_toml(name_key=NAME_KEYS["drift"]),
            "round_timeout_s": self.round_timeout_s,
            "max_future_rounds": self.max_future_rounds,
            "max_mix_growth": self.max_mix_growth,
            "norm_floor_rms": self.norm_floor_rms,
        }

    def describe(self) -> dict[str, Any]:
        """For summaries and status: every component with all its parameters."""
        out: dict[str, Any] = {}
        for key in REGISTRIES:
            choice: Choice = getattr(self, key)
            out[key] = {NAME_KEYS[key]: choice.name, **choice.param_values()}
        out["round_timeout_s"] = self.round_timeout_s
        out["max_future_rounds"] = self.max_future_rounds
        out["max_mix_growth"] = self.max_mix_growth
        out["norm_floor_rms"] = self.norm_floor_rms
        return out


def reject_moved_keys(raw: Mapping[str, Any], moved: Mapping[tuple[str, str], str]) -> None:
    """One clear line for a config written before the [gossip]/[consortium] split."""
    for (section, key), where in moved.items():
        table = raw.get(section)
        if isinstance(table, Mapping) and key in table:
            raise ConfigError(f"[{section}] {key} has moved: set it as {where}")
