"""The daemon's part of `site.toml`: a `[daemon]` table plus the learning tables.

    [daemon]   rounds, round_timeout_s, site_index, problem, base_model, mixing, aggregation,
               eval_every, max_future_rounds, max_message_mib, control_port, dial_timeout_s,
               codec, topk_fraction, codec_refresh_every, drift (as `gossipmed simulate`)
    [data] [adapter] [dp] [train]   exactly as in gossipmed.config (one site's learning)

Unknown keys are errors (a misspelt privacy setting must never fall back to a default).
Relative paths (base_model, data.path) are resolved against the site directory.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipmed.aggregate import RULES as AGGREGATION_RULES
from gossipmed.config import LearningConfig, learning_config_from_mapping, section_from_mapping
from gossipmed.errors import ConfigError
from gossipmed.site import SITE_FILE, Site, load_site
from node.peer import MAX_GOSSIP_STEPS
from node.peer_options import PeerOptions
from topology.mixing import RULES as MIXING_RULES

PROBLEMS = ("lm", "quadratic")
STATE_DIR = "state"
CONTROL_FILE = "control.json"
LOG_FILE = "daemon.log"


@dataclass(frozen=True)
class DaemonSection:
    rounds: int = 0  # 0: run until stopped
    round_timeout_s: float = 30.0  # wait for neighbours after sending, per round
    site_index: int = 0  # this site's partition of a built-in dataset
    problem: str = "lm"  # lm | quadratic (synthetic, for protocol experiments)
    base_model: str = ""  # local Hugging Face folder; empty: the built-in tiny base
    mixing: str = "metropolis-hastings"
    aggregation: str = "weighted"
    eval_every: int = 1
    gossip_steps: int = 0  # exchanges per round; 0: auto from the roster graph's lambda2
    max_future_rounds: int = 2  # envelopes buffered for rounds ahead of ours
    max_message_mib: float = 64.0
    control_port: int = 0  # 127.0.0.1 status endpoint; 0 picks a free port
    dial_timeout_s: float = 5.0
    seed: int = 0  # quadratic problem only
    # the simulator's codec and drift options (node.peer_options), same names and defaults
    codec: str = "raw"  # raw | fp16 | bf16 | int8 | topk
    topk_fraction: float = 0.01  # codec = "topk": share of entries sent per round
    codec_refresh_every: int = 0  # codec = "topk": dense keyframe every N rounds (0: first only)
    drift: str = "none"  # none | d2

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ConfigError("daemon.rounds must be >= 0 (0 = until stopped)")
        if not (math.isfinite(self.round_timeout_s) and self.round_timeout_s > 0):
            raise ConfigError("daemon.round_timeout_s must be a positive number")
        if self.site_index < 0:
            raise ConfigError("daemon.site_index must be >= 0")
        if self.problem not in PROBLEMS:
            raise ConfigError(f"daemon.problem must be one of {', '.join(PROBLEMS)}")
        if self.mixing not in MIXING_RULES:
            raise ConfigError(f"daemon.mixing must be one of {', '.join(MIXING_RULES)}")
        if self.aggregation not in AGGREGATION_RULES:
            raise ConfigError(f"daemon.aggregation must be one of {', '.join(AGGREGATION_RULES)}")
        if self.eval_every < 1:
            raise ConfigError("daemon.eval_every must be >= 1")
        if not 0 <= self.gossip_steps <= MAX_GOSSIP_STEPS:
            raise ConfigError(f"daemon.gossip_steps must be 0 (auto) or 1..{MAX_GOSSIP_STEPS}")
        if not 0 <= self.max_future_rounds <= 64:
            raise ConfigError("daemon.max_future_rounds must be in 0..64")
        if not (math.isfinite(self.max_message_mib) and 0 < self.max_message_mib <= 4096):
            raise ConfigError("daemon.max_message_mib must be in (0, 4096]")
        if not 0 <= self.control_port <= 65535:
            raise ConfigError("daemon.control_port must be a TCP port (0 = any free one)")
        if not (math.isfinite(self.dial_timeout_s) and self.dial_timeout_s > 0):
            raise ConfigError("daemon.dial_timeout_s must be a positive number")
        try:
            self.peer_options  # noqa: B018  (validation lives in PeerOptions, once)
        except ConfigError as exc:
            raise ConfigError(f"daemon.{exc}") from None

    @property
    def max_bytes(self) -> int:
        return int(self.max_message_mib * (1 << 20))

    @property
    def peer_options(self) -> PeerOptions:
        """The codec and drift choices; attacks stay a simulator-only option."""
        return PeerOptions(
            codec=self.codec,
            topk_fraction=self.topk_fraction,
            codec_refresh_every=self.codec_refresh_every,
            drift=self.drift,
        )


@dataclass(frozen=True)
class DaemonSettings:
    """Everything `gossipmed run` needs, resolved from one site folder."""

    site: Site
    daemon: DaemonSection
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
        daemon = section_from_mapping(DaemonSection, raw.get("daemon", {}), section="daemon")
        learning = learning_config_from_mapping(
            {k: raw[k] for k in ("data", "adapter", "dp", "train") if k in raw}
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
    return DaemonSettings(site=site, daemon=daemon, learning=learning)
