"""Every configuration table a user writes, declared once: which file, which section, which
dataclass. The configuration reference is rendered from this list and the docs tests check
every `[section] key` a page mentions against it, so a new table only needs a line here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from gossipmed.consortium.member import Member
from gossipmed.consortium.roster import READABLE_VERSIONS, ROSTER_VERSION, Roster
from gossipmed.consortium.settings import ConsortiumSettings
from gossipmed.consortium.site import SiteConfig
from gossipmed.learn.config import (
    AdapterConfig,
    ComputeConfig,
    DataConfig,
    DPConfig,
    LearningConfig,
    TrainConfig,
)
from gossipmed.mixing.drift import DRIFT
from gossipmed.mixing.rules import RULES
from gossipmed.registry import Registry
from gossipmed.wire.compression import ENCODERS
from node.daemon.config import DaemonSection
from node.reference.fielddocs import public_fields
from node.round.config import NAME_KEYS, GossipConfig
from node.sim.attacks import AttackConfig
from node.sim.config import SimSection
from node.sim.faults import FaultConfig

SITE_FILE = "site.toml"
SIM_FILE = "sim.toml"
CONSORTIUM_FILE = "consortium.toml"


@dataclass(frozen=True)
class Table:
    """One TOML table (or the top level, section "") of one or more files."""

    section: str
    cls: type[Any]
    files: tuple[str, ...]
    anchor: str
    summary: str
    only: tuple[str, ...] = ()
    """When set, the keys of `cls` this table takes (the rest live elsewhere)."""
    skip: tuple[str, ...] = ()
    extra: tuple[tuple[str, str, str, str], ...] = ()
    """Keys the file has that no field holds: (key, type, default, meaning)."""

    @property
    def heading(self) -> str:
        if self.section == "":
            return "top level"
        if self.section == "members":
            return "[[members]]"
        return f"[{self.section}]"

    def fields(self) -> list[dataclasses.Field[Any]]:
        out = public_fields(self.cls)
        if self.only:
            out = [f for f in out if f.name in self.only]
        return [f for f in out if f.name not in self.skip]


@dataclass(frozen=True)
class Component:
    """A `[gossip]` key whose value names a registered component (a name or a table)."""

    key: str
    name_key: str
    registry: Registry[Any]


LEARNING_FILES = (SITE_FILE, SIM_FILE)
TABLES: tuple[Table, ...] = (
    Table(
        "",
        SiteConfig,
        (SITE_FILE,),
        "site-top-level",
        "A site's identity: its name, listen addresses, key files and consortium file.",
    ),
    Table(
        "daemon",
        DaemonSection,
        (SITE_FILE,),
        "section-daemon",
        "How `gossipmed run` drives this site's rounds.",
    ),
    Table(
        "gossip",
        GossipConfig,
        (SITE_FILE, SIM_FILE),
        "section-gossip",
        "One site's own gossip choices; sites of one consortium may differ here.",
    ),
    Table("data", DataConfig, LEARNING_FILES, "section-data", "The data a site learns from."),
    Table("adapter", AdapterConfig, LEARNING_FILES, "section-adapter", "What is trained."),
    Table("dp", DPConfig, LEARNING_FILES, "section-dp", "Differential privacy (DP-SGD)."),
    Table("train", TrainConfig, LEARNING_FILES, "section-train", "Local training steps."),
    Table("compute", ComputeConfig, LEARNING_FILES, "section-compute", "Device and precision."),
    Table(
        "",
        LearningConfig,
        (SIM_FILE,),
        "sim-top-level",
        "The shared base model of a simulation (a daemon sets `[daemon] base_model`).",
        only=("base_model",),
    ),
    Table("sim", SimSection, (SIM_FILE,), "section-sim", "One `gossipmed simulate` run."),
    Table(
        "consortium",
        ConsortiumSettings,
        (SIM_FILE,),
        "section-consortium",
        "What every site must share; a deployment keeps it in the consortium file's "
        "`[gossip]` table.",
        skip=("task",),
    ),
    Table("attack", AttackConfig, (SIM_FILE,), "section-attack", "Simulated attackers."),
    Table("faults", FaultConfig, (SIM_FILE,), "section-faults", "Simulated faults."),
    Table(
        "",
        Roster,
        (CONSORTIUM_FILE,),
        "consortium-top-level",
        "The roster: who is in the consortium and who gossips with whom. Written by "
        "`gossipmed consortium`; every change changes its hash.",
        skip=("members", "settings"),
        extra=(
            (
                "version",
                "integer",
                "required",
                f"Format version of the file; this gossipmed writes {ROSTER_VERSION} and "
                f"reads {', '.join(map(str, READABLE_VERSIONS))}.",
            ),
        ),
    ),
    Table(
        "gossip",
        ConsortiumSettings,
        (CONSORTIUM_FILE,),
        "consortium-gossip",
        "Gossip settings every site must share; they enter the roster hash.",
    ),
    Table(
        "members",
        Member,
        (CONSORTIUM_FILE,),
        "consortium-members",
        "One entry per site: its card as `gossipmed consortium add` copies it.",
    ),
)

COMPONENTS: tuple[Component, ...] = (
    Component("aggregation", NAME_KEYS["aggregation"], RULES),
    Component("codec", NAME_KEYS["codec"], ENCODERS),
    Component("drift", NAME_KEYS["drift"], DRIFT),
)


def config_classes() -> Iterator[type[Any]]:
    """Every dataclass whose fields a user sets: the tables and the components' parameters."""
    seen: set[type[Any]] = set()
    for table in TABLES:
        if table.cls not in seen:
            seen.add(table.cls)
            yield table.cls
    for component in COMPONENTS:
        for _name, spec in component.registry.items():
            if spec.params not in seen and public_fields(spec.params):
                seen.add(spec.params)
                yield spec.params


def section_keys() -> dict[str, set[str]]:
    """{section: its keys} over every file; "" is the top level."""
    out: dict[str, set[str]] = {}
    for table in TABLES:
        out.setdefault(table.section, set()).update(f.name for f in table.fields())
        out[table.section].update(key for key, *_ in table.extra)
    return out
