"""Configuration of one `gossipmed simulate` run: topology, rounds, faults, and the learning
config every simulated site shares (gossipmed.config.LearningConfig).

TOML layout (every key optional; command-line flags override the file):

    [sim]      topology, degree, p, topology_file, mixing, aggregation, rounds, eval_every,
               gossip_steps, train, baselines, sealing, problem, seed,
               codec, topk_fraction, codec_refresh_every, drift, attack, attackers, attack_scale
    [faults]   drop_prob, offline_prob, straggler_prob, straggler_delay, round_timeout
    [data] [adapter] [dp] [train]   as in gossipmed.config (data.n_sites = number of sites)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gossipmed.aggregate import RULES as AGGREGATION_RULES
from gossipmed.config import LearningConfig, learning_config_from_mapping, section_from_mapping
from gossipmed.errors import ConfigError
from node.faults import FaultConfig
from node.peer import MAX_GOSSIP_STEPS
from node.peer_options import options_from_sim
from topology.graphs import KINDS
from topology.mixing import RULES as MIXING_RULES

SEALING_MODES = ("envelope", "plaintext")
PROBLEMS = ("lm", "quadratic")
"""lm: the clinical language model (gossipmed.train); quadratic: a synthetic per-site
least-squares problem that runs in milliseconds, for topology and fault experiments."""


@dataclass(frozen=True)
class SimSection:
    topology: str = "ring"
    degree: int | None = None
    p: float | None = None
    topology_file: str | None = None
    mixing: str = "metropolis-hastings"
    aggregation: str = "weighted"
    rounds: int = 20
    eval_every: int = 1
    gossip_steps: int = 0  # exchanges per round; 0: auto from lambda2 (node.peer)
    train: bool = True  # false: gossip only (measures pure consensus contraction)
    baselines: bool = False
    sealing: str = "envelope"
    problem: str = "lm"
    seed: int = 0
    # issue #7 options (node.peer_options): defaults keep plain gossip
    codec: str = "raw"
    topk_fraction: float = 0.01
    codec_refresh_every: int = 0
    drift: str = "none"
    attack: str = "none"
    attackers: int = 0
    attack_scale: float = 10.0

    def __post_init__(self) -> None:
        if self.topology not in KINDS:
            raise ConfigError(f"sim.topology must be one of {', '.join(KINDS)}")
        if self.mixing not in MIXING_RULES:
            raise ConfigError(f"sim.mixing must be one of {', '.join(MIXING_RULES)}")
        if self.aggregation not in AGGREGATION_RULES:
            raise ConfigError(f"sim.aggregation must be one of {', '.join(AGGREGATION_RULES)}")
        if not 1 <= self.rounds <= 100_000:
            raise ConfigError("sim.rounds must be in 1..100000")
        if self.eval_every < 1:
            raise ConfigError("sim.eval_every must be >= 1")
        if not 0 <= self.gossip_steps <= MAX_GOSSIP_STEPS:
            raise ConfigError(f"sim.gossip_steps must be 0 (auto) or 1..{MAX_GOSSIP_STEPS}")
        if self.sealing not in SEALING_MODES:
            raise ConfigError(f"sim.sealing must be one of {', '.join(SEALING_MODES)}")
        if self.problem not in PROBLEMS:
            raise ConfigError(f"sim.problem must be one of {', '.join(PROBLEMS)}")
        if self.p is not None and not (0.0 <= self.p <= 1.0 and math.isfinite(self.p)):
            raise ConfigError("sim.p must be in [0, 1]")
        options_from_sim(self)  # validates codec, drift and attack fields


@dataclass(frozen=True)
class SimConfig:
    sim: SimSection = field(default_factory=SimSection)
    faults: FaultConfig = field(default_factory=FaultConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)

    @property
    def nodes(self) -> int:
        return self.learning.data.n_sites

    def to_mapping(self) -> dict[str, Any]:
        """The resolved config as TOML-shaped tables (None values left out)."""
        out: dict[str, Any] = {
            "sim": _table(self.sim),
            "faults": _table(self.faults),
            "data": _table(self.learning.data),
            "adapter": _table(self.learning.adapter),
            "dp": _table(self.learning.dp),
            "train": _table(self.learning.train),
        }
        if self.learning.base_model is not None:
            out["base_model"] = self.learning.base_model
        return out


def _table(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def sim_config_from_mapping(raw: Mapping[str, Any]) -> SimConfig:
    unknown = sorted(set(raw) - {"sim", "faults", "data", "adapter", "dp", "train", "base_model"})
    if unknown:
        raise ConfigError(f"unknown config sections: {', '.join(unknown)}")
    return SimConfig(
        sim=section_from_mapping(SimSection, raw.get("sim", {}), section="sim"),
        faults=section_from_mapping(FaultConfig, raw.get("faults", {}), section="faults"),
        learning=learning_config_from_mapping(raw),
    )


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc


def merge_overrides(
    raw: Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """raw with overrides[section][key] replacing the file's values (None = not given)."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items()}
    for section, values in overrides.items():
        table = merged.setdefault(section, {})
        for key, value in values.items():
            if value is not None:
                table[key] = value
    return merged


def to_toml(mapping: Mapping[str, Any]) -> str:
    """Enough TOML for a resolved config: scalars, strings, lists of scalars, one table level."""
    lines: list[str] = []
    for key, value in mapping.items():
        if not isinstance(value, Mapping):
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            lines.append(f"\n[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None)
    return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")


def with_changes(config: SimConfig, **sim_changes: Any) -> SimConfig:
    return dataclasses.replace(config, sim=dataclasses.replace(config.sim, **sim_changes))
