"""The daemon's part of `site.toml`: `[daemon]`, `[gossip]` and the learning tables.

    [daemon]   rounds, site_index, problem, base_model, eval_every, max_message_mib (0: the
               largest legitimate update of this site's adapter, gossipmed.wire.limits),
               control_port, dial_timeout_s, seed
    [gossip]   aggregation, codec, drift, round_timeout_s, max_future_rounds: this site's own
               gossip choices, the same table as a simulation's (node.round.config)
    [data] [adapter] [dp] [train]   exactly as in gossipmed.learn.config (one site's learning)

What every site must share (exchanges per round, mixing weights) comes from the consortium
file instead. Unknown keys are errors (a misspelt privacy setting must never fall back to a
default). Relative paths (base_model, data.path) are resolved against the site directory.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipmed.consortium.site import SITE_FILE, Site, load_site
from gossipmed.errors import ConfigError
from gossipmed.learn.config import (
    LearningConfig,
    learning_config_from_mapping,
    section_from_mapping,
)
from node.daemon.control_client import CONTROL_FILE as CONTROL_FILE
from node.round.config import GossipConfig, reject_moved_keys

PROBLEMS = ("lm", "quadratic")
STATE_DIR = "state"
LOG_FILE = "daemon.log"
MOVED = {
    ("daemon", "mixing"): "the consortium file's [gossip] mixing (all sites must agree)",
    ("daemon", "gossip_steps"): "the consortium file's [gossip] gossip_steps",
    ("daemon", "aggregation"): "[gossip] aggregation",
    ("daemon", "codec"): "[gossip] codec",
    ("daemon", "topk_fraction"): '[gossip] codec = { name = "topk", fraction = ... }',
    ("daemon", "codec_refresh_every"): '[gossip] codec = { name = "topk", refresh_every = ... }',
    ("daemon", "drift"): "[gossip] drift",
    ("daemon", "round_timeout_s"): "[gossip] round_timeout_s",
    ("daemon", "max_future_rounds"): "[gossip] max_future_rounds",
}


@dataclass(frozen=True)
class DaemonSection:
    rounds: int = 0
    """Rounds to run; 0 runs until stopped."""
    site_index: int = 0
    """This site's partition of a built-in dataset (0-based, below `[data] n_sites`)."""
    problem: str = "lm"
    """"lm" (the language model) or "quadratic" (synthetic, for protocol experiments)."""
    base_model: str = ""
    """A local Hugging Face model folder (relative to the site folder); empty: the built-in tiny
    base."""
    eval_every: int = 1
    """Evaluate every this many rounds."""
    max_message_mib: float = 0.0
    """Largest message accepted, in MiB; 0 derives it from this site's adapter."""
    control_port: int = 0
    """Port of the 127.0.0.1 status and dashboard endpoint; 0 picks a free port."""
    dial_timeout_s: float = 5.0
    """Seconds to wait when dialling a neighbour."""
    seed: int = 0
    """Seed of the `problem = "quadratic"` data (the lm problem uses `[train] seed`)."""

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError("daemon.rounds must be >= 0 (0 = until stopped)")
        if self.site_index < 0:
            raise ConfigError("daemon.site_index must be >= 0")
        if self.problem not in PROBLEMS:
            raise ConfigError(f"daemon.problem must be one of {', '.join(PROBLEMS)}")
        if self.eval_every < 1:
            raise ConfigError("daemon.eval_every must be >= 1")
        if not (math.isfinite(self.max_message_mib) and 0 <= self.max_message_mib <= 4096):
            raise ConfigError("daemon.max_message_mib must be 0 (derived) or in (0, 4096]")
        if not 0 <= self.control_port <= 65535:
            raise ConfigError("daemon.control_port must be a TCP port (0 = any free one)")
        if not (math.isfinite(self.dial_timeout_s) and self.dial_timeout_s > 0):
            raise ConfigError("daemon.dial_timeout_s must be a positive number")

    @property
    def max_bytes(self) -> int | None:
        """An explicit limit, or None to derive it from the adapter's schema."""
        return int(self.max_message_mib * (1 << 20)) if self.max_message_mib else None


@dataclass(frozen=True)
class DaemonSettings:
    """Everything `gossipmed run` needs, resolved from one site folder."""

    site: Site
    daemon: DaemonSection
    gossip: GossipConfig
    learning: LearningConfig

    @property
    def directory(self) -> Path:
        return self.site.directory

    @property
    def state_dir(self) -> Path:
        return self.directory / STATE_DIR

    @property
    def control_file(self) -> Path:
        return self.directory / CONTROL_FILE

    @property
    def log_file(self) -> Path:
        return self.directory / LOG_FILE


def load_daemon_settings(site_dir: Path) -> DaemonSettings:
    site = load_site(Path(site_dir))
    path = site.directory / SITE_FILE
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:  # load_site read it a moment ago
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    try:
        reject_moved_keys(raw, MOVED)
        daemon = section_from_mapping(DaemonSection, raw.get("daemon", {}), section="daemon")
        gossip = GossipConfig.from_mapping(raw.get("gossip", {}))
        learning = learning_config_from_mapping(
            {k: raw[k] for k in ("data", "adapter", "dp", "train", "compute") if k in raw}
        )
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if daemon.base_model:
        learning = dataclasses.replace(learning, base_model=str(site.path(daemon.base_model)))
    if learning.data.path is not None:
        data = dataclasses.replace(learning.data, path=str(site.path(learning.data.path)))
        learning = dataclasses.replace(learning, data=data)
    if daemon.problem == "lm" and daemon.site_index >= learning.data.n_sites:
        raise ConfigError(
            f"{path}: daemon.site_index {daemon.site_index} is not below data.n_sites "
            f"{learning.data.n_sites}"
        )
    if not site.config.consortium:
        raise ConfigError(f"{path} names no consortium file (set `consortium = ...`)")
    return DaemonSettings(site=site, daemon=daemon, gossip=gossip, learning=learning)
