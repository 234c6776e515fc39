"""Configuration of one `gossipmed simulate` run. TOML layout (every key optional; command-line
flags override the file):

    [sim]         topology, degree, p, topology_file, rounds, eval_every, train, baselines,
                  sealing, problem, seed; engine, ray_address, sites_per_worker,
                  worker_cpus, worker_gpus (where the sites run: never part of what
                  sites agree on)
    [consortium]  gossip_steps, mixing, secure_aggregation (+ secagg_rms, the norm
                  envelope) -- what a deployment keeps in its consortium file
                  (gossipmed.consortium.settings)
    [gossip]      aggregation, codec, drift, round_timeout_s, max_future_rounds -- each
                  site's own choices, the same table as in a daemon's site.toml
                  (node.round.config)
    [attack]      kind, attackers, scale, noise_std -- simulator only (node.sim.attacks)
    [faults]      drop_prob, offline_prob, straggler_prob, straggler_delay
    [data] [adapter] [dp] [train] [compute]   as in gossipmed.learn.config (data.n_sites =
                  number of sites; [compute]: device and base_dtype of the one shared base)
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.errors import ConfigError
from gossipmed.learn.config import (
    LearningConfig,
    learning_config_from_mapping,
    section_from_mapping,
)
from gossipmed.toml_writer import toml_document
from node.round.config import GossipConfig, reject_moved_keys
from node.round.secure_config import check_secure_gossip
from node.sim.attacks import AttackConfig
from node.sim.faults import FaultConfig
from topology.graphs import KINDS

SEALING_MODES = ("envelope", "plaintext")
PROBLEMS = ("lm", "quadratic")
"""lm: the clinical language model (gossipmed.learn.train); quadratic: a synthetic per-site
least-squares problem that runs in milliseconds, for topology and fault experiments."""

ENGINES = ("inprocess", "ray")
"""inprocess: every site in this process (the default); ray: sites in Ray actors, several per
actor (node.sim.engine.ray_group; the optional extra 'ray')."""
ENGINE_KEYS = ("engine", "ray_address", "sites_per_worker", "worker_cpus", "worker_gpus")
"""[sim] keys that say where a simulation runs, not what it computes: left out of anything the
simulated sites must agree on."""

SECTIONS = (
    "sim",
    "consortium",
    "gossip",
    "attack",
    "faults",
    "data",
    "adapter",
    "dp",
    "train",
    "compute",
    "base_model",
)
MOVED = {
    ("sim", "mixing"): "[consortium] mixing",
    ("sim", "gossip_steps"): "[consortium] gossip_steps",
    ("sim", "aggregation"): "[gossip] aggregation",
    ("sim", "codec"): "[gossip] codec",
    ("sim", "topk_fraction"): '[gossip] codec = { name = "topk", fraction = ... }',
    ("sim", "codec_refresh_every"): '[gossip] codec = { name = "topk", refresh_every = ... }',
    ("sim", "drift"): "[gossip] drift",
    ("sim", "attack"): "[attack] kind",
    ("sim", "attackers"): "[attack] attackers",
    ("sim", "attack_scale"): "[attack] scale",
    ("faults", "round_timeout"): "[gossip] round_timeout_s",
}
"""Keys of the layout before [consortium]/[gossip]/[attack] existed: refused, with the new key."""


@dataclass(frozen=True)
class SimSection:
    topology: str = "ring"
    """The graph: ring, torus, complete, star, hypercube, random-regular, erdos-renyi, small-world,
    exponential, one-peer-exponential, or file."""
    degree: int | None = None
    """Degree for random-regular and small-world graphs."""
    p: float | None = None
    """Edge probability (erdos-renyi) or rewiring probability (small-world)."""
    topology_file: str | None = None
    """Graph file for `topology = "file"`."""
    rounds: int = 20
    """Gossip rounds to run."""
    eval_every: int = 1
    """Evaluate every this many rounds (and after the last)."""
    train: bool = True
    """false: gossip only, no local training (measures pure consensus contraction)."""
    baselines: bool = False
    """Also run the local-only and centralised baselines, under baselines/ of the output folder."""
    sealing: str = "envelope"
    """"envelope" seals every message as a deployment does (signed and encrypted); "plaintext" skips
    it for speed."""
    problem: str = "lm"
    """"lm" (the clinical language model) or "quadratic" (a synthetic least-squares problem that
    runs in milliseconds)."""
    seed: int = 0
    """Seed of the graph, of attacker choice and of the quadratic problem."""
    engine: str = "inprocess"
    """Where the sites run: "inprocess" (every site in this process) or "ray" (sites in Ray
    actors; the optional `ray` extra). Never part of what the sites agree on."""
    ray_address: str | None = None
    """The Ray cluster to join (HOST:6379 or "auto"); omitted: a private local Ray."""
    sites_per_worker: int | None = None
    """Sites hosted by one Ray worker; omitted: spread evenly over the cluster's CPUs."""
    worker_cpus: float = 1.0
    """CPUs (and torch threads) each Ray worker takes."""
    worker_gpus: float = 0.0
    """GPUs each Ray worker takes (1: one worker per GPU)."""

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ConfigError(f"sim.engine must be one of {', '.join(ENGINES)}")
        if self.ray_address is not None and not (
            isinstance(self.ray_address, str) and self.ray_address.strip()
        ):
            raise ConfigError("sim.ray_address must be a Ray address such as HOST:6379 or auto")
        if self.sites_per_worker is not None and not 1 <= self.sites_per_worker <= 1_000_000:
            raise ConfigError("sim.sites_per_worker must be >= 1")
        if not (math.isfinite(self.worker_cpus) and self.worker_cpus > 0):
            raise ConfigError("sim.worker_cpus must be a number > 0")
        if not (math.isfinite(self.worker_gpus) and self.worker_gpus >= 0):
            raise ConfigError("sim.worker_gpus must be a number >= 0")
        if self.topology not in KINDS:
            raise ConfigError(f"sim.topology must be one of {', '.join(KINDS)}")
        if not 1 <= self.rounds <= 100_000:
            raise ConfigError("sim.rounds must be in 1..100000")
        if self.eval_every < 1:
            raise ConfigError("sim.eval_every must be >= 1")
        if self.sealing not in SEALING_MODES:
            raise ConfigError(f"sim.sealing must be one of {', '.join(SEALING_MODES)}")
        if self.problem not in PROBLEMS:
            raise ConfigError(f"sim.problem must be one of {', '.join(PROBLEMS)}")
        if self.p is not None and not (0.0 <= self.p <= 1.0 and math.isfinite(self.p)):
            raise ConfigError("sim.p must be in [0, 1]")


@dataclass(frozen=True)
class SimConfig:
    sim: SimSection = field(default_factory=SimSection)
    consortium: ConsortiumSettings = field(default_factory=ConsortiumSettings)
    gossip: GossipConfig = field(default_factory=GossipConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)

    def __post_init__(self) -> None:
        check_secure_gossip(self.consortium, self.gossip)
        if self.consortium.secure_aggregation and self.attack.active:
            raise ConfigError(
                "secure_aggregation with a simulated [attack] is not supported: the attacks "
                "forge sealed updates, which secure aggregation does not send"
            )
        if self.consortium.secure_aggregation and not self.sim.train:
            raise ConfigError(
                "secure_aggregation needs training (no --no-train / train = false): sums of "
                "training-free states reveal individual states across rounds"
            )

    @property
    def nodes(self) -> int:
        return self.learning.data.n_sites

    def graphs(self) -> list[Any]:
        """The run's graph per round (networkx graphs), as the simulation and its dashboard
        both draw it."""
        from topology.graphs import graph_schedule

        sim = self.sim
        return graph_schedule(
            sim.topology,
            nodes=self.nodes,
            degree=sim.degree,
            p=sim.p,
            seed=sim.seed,
            path=sim.topology_file,
        )

    def to_mapping(self) -> dict[str, Any]:
        """The resolved config as TOML-shaped tables (None values left out)."""
        out: dict[str, Any] = {
            "sim": _table(self.sim),
            "consortium": self.consortium.to_mapping(),
            "gossip": self.gossip.to_mapping(),
            "attack": _table(self.attack),
            "faults": _table(self.faults),
            "data": _table(self.learning.data),
            "adapter": _table(self.learning.adapter),
            "dp": _table(self.learning.dp),
            "train": _table(self.learning.train),
            "compute": _table(self.learning.compute),
        }
        if self.learning.base_model is not None:
            out["base_model"] = self.learning.base_model
        return out


def agreed_mapping(config: SimConfig) -> dict[str, Any]:
    """The resolved config without the keys that only say where it runs."""
    out = config.to_mapping()
    out["sim"] = {k: v for k, v in out["sim"].items() if k not in ENGINE_KEYS}
    return out


def _table(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj) if getattr(obj, f.name) is not None}


def sim_config_from_mapping(raw: Mapping[str, Any]) -> SimConfig:
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config sections: {', '.join(unknown)}")
    reject_moved_keys(raw, MOVED)
    return SimConfig(
        sim=section_from_mapping(SimSection, raw.get("sim", {}), section="sim"),
        consortium=ConsortiumSettings.from_mapping(
            raw.get("consortium", {}), where="[consortium]", task=False
        ),
        gossip=GossipConfig.from_mapping(raw.get("gossip", {})),
        attack=section_from_mapping(AttackConfig, raw.get("attack", {}), section="attack"),
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
    """The resolved config as a file `--config` reads back."""
    return toml_document(mapping)


def with_changes(config: SimConfig, **sim_changes: Any) -> SimConfig:
    return dataclasses.replace(config, sim=dataclasses.replace(config.sim, **sim_changes))
