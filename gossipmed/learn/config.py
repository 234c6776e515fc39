"""Frozen, validated configuration for one site's learning (data, adapter, DP, training).

Every field is checked in `__post_init__` so a bad TOML file fails at load time with a
`ConfigError` naming the field, not minutes later inside a training loop.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from gossipmed.errors import ConfigError

DatasetName = Literal["icd10", "heart", "notes", "user"]
PartitionScheme = Literal["natural", "iid", "dirichlet"]
AdapterKind = Literal["lora", "ffa_lora", "prompt", "full"]
AccountantName = Literal["rdp", "prv"]
LossOn = Literal["label", "all"]
OptimizerName = Literal["sgd", "adam"]
BaseDtype = Literal["float32", "bfloat16", "float16"]

DATASETS: tuple[str, ...] = get_args(DatasetName)
PARTITIONS: tuple[str, ...] = get_args(PartitionScheme)
ADAPTER_KINDS: tuple[str, ...] = get_args(AdapterKind)
ACCOUNTANTS: tuple[str, ...] = get_args(AccountantName)
BASE_DTYPES: tuple[str, ...] = get_args(BaseDtype)
AUTO = "auto"

# Per-sample LoRA (q/v, rank 8) gradient norms on the tiny base's icd10 label loss are ~4-13
# (10th-90th percentile, measured; BENCHMARKS.md): clip 1.0 clips nearly every sample,
# so each example contributes a unit direction and the noise std equals sigma exactly.
DEFAULT_CLIP_NORM = 1.0
# Adam on the privatised gradient (post-processing) beat plain SGD clearly (BENCHMARKS.md).
# 0.02, not the 0.01 that is best for one site alone: gossip averages the sites' DP noise,
# which tolerates a larger step (8-site icd10 ring, 20 rounds: 0.202 at 0.02, 0.170 at 0.01).
DEFAULT_LR = 0.02


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "icd10"
    n_sites: int = 4
    partition: PartitionScheme = "dirichlet"
    alpha: float = 0.5  # Dirichlet concentration; small = strong label skew
    seed: int = 0
    path: str | None = None  # user data: a .jsonl/.txt file or a folder of them
    max_train_examples: int = 20000  # pooled train examples kept (keeps runs fast)
    eval_size: int = 300  # held-out global test examples
    max_length: int = 64  # tokens per example (prompt + label)

    def __post_init__(self) -> None:
        _require(self.dataset in DATASETS, f"data.dataset must be one of {DATASETS}")
        _require(self.partition in PARTITIONS, f"data.partition must be one of {PARTITIONS}")
        _require(1 <= self.n_sites <= 16384, "data.n_sites must be in 1..16384")
        _require(self.alpha > 0 and math.isfinite(self.alpha), "data.alpha must be > 0")
        _require(self.max_train_examples >= self.n_sites, "data.max_train_examples < n_sites")
        _require(self.eval_size >= 1, "data.eval_size must be >= 1")
        _require(8 <= self.max_length <= 4096, "data.max_length must be in 8..4096")
        _require(
            self.dataset != "user" or self.path is not None, "data.path is required for user data"
        )


@dataclass(frozen=True)
class AdapterConfig:
    kind: AdapterKind = "lora"
    rank: int = 8
    lora_alpha: int = 16
    # None (or "auto" in TOML) = chosen per architecture: peft's default for the model type,
    # else the attention's query/value (or fused qkv) projections; q_proj, v_proj on Llama
    target_modules: tuple[str, ...] | None = None
    num_virtual_tokens: int = 8  # prompt tuning
    shared_seed: int = 1234  # FFA-LoRA: consortium-wide seed for the frozen A matrices

    def __post_init__(self) -> None:
        _require(self.kind in ADAPTER_KINDS, f"adapter.kind must be one of {ADAPTER_KINDS}")
        _require(1 <= self.rank <= 1024, "adapter.rank must be in 1..1024")
        _require(self.lora_alpha > 0, "adapter.lora_alpha must be > 0")
        if self.target_modules == AUTO:
            object.__setattr__(self, "target_modules", None)
        targets = self.target_modules
        _require(
            targets is None
            or (
                isinstance(targets, tuple)
                and len(targets) > 0
                and all(isinstance(t, str) and t.strip() for t in targets)
            ),
            'adapter.target_modules must be "auto" or a non-empty list of module names',
        )
        _require(1 <= self.num_virtual_tokens <= 512, "adapter.num_virtual_tokens in 1..512")


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings. `noise_multiplier=None` means: calibrate from the epsilon budget."""

    enabled: bool = True
    epsilon: float = 8.0  # the site's total budget at `delta`
    delta: float = 1e-5
    clip_norm: float = DEFAULT_CLIP_NORM
    noise_multiplier: float | None = None
    planned_steps: int = 400  # steps the calibrated noise must last for (20 default rounds)
    accountant: AccountantName = "rdp"

    def __post_init__(self) -> None:
        _require(self.epsilon > 0 and math.isfinite(self.epsilon), "dp.epsilon must be > 0")
        _require(0 < self.delta < 1, "dp.delta must be in (0, 1)")
        _require(self.clip_norm > 0 and math.isfinite(self.clip_norm), "dp.clip_norm must be > 0")
        _require(
            self.noise_multiplier is None or self.noise_multiplier > 0,
            "dp.noise_multiplier must be > 0 (or omitted to calibrate)",
        )
        _require(self.planned_steps >= 1, "dp.planned_steps must be >= 1")
        _require(self.accountant in ACCOUNTANTS, f"dp.accountant must be one of {ACCOUNTANTS}")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = DEFAULT_LR
    # expected batch (Poisson rate = batch_size / n_site); under DP bigger batches pay off
    # (icd10 eps 8, 150 steps: 0.19 accuracy at 64, 0.24 at 128; BENCHMARKS.md)
    batch_size: int = 128
    # 20 local steps per round: within 20 rounds, the number of steps is what limits
    # accuracy, not consensus (BENCHMARKS.md, "8 sites, ring")
    steps_per_round: int = 20
    # examples per forward/backward pass, private or not: peak memory follows it, results do
    # not (the logical batch is summed across micro-batches). None (or "auto" in TOML) sizes
    # it from the model's shape (gossipmed.learn.compute.auto_microbatch).
    microbatch: int | None = None
    loss_on: LossOn = "label"  # labelled data: train/eval loss on the label tokens only
    seed: int = 0
    optimizer: OptimizerName = "adam"  # per-site state; Adam moments never leave the site

    def __post_init__(self) -> None:
        _require(self.lr > 0 and math.isfinite(self.lr), "train.lr must be > 0")
        _require(self.optimizer in ("sgd", "adam"), "train.optimizer must be 'sgd' or 'adam'")
        _require(self.batch_size >= 1, "train.batch_size must be >= 1")
        _require(self.steps_per_round >= 1, "train.steps_per_round must be >= 1")
        if self.microbatch == AUTO:
            object.__setattr__(self, "microbatch", None)
        _require(
            self.microbatch is None
            or (
                isinstance(self.microbatch, int)
                and not isinstance(self.microbatch, bool)
                and self.microbatch >= 1
            ),
            'train.microbatch must be "auto" or an integer >= 1',
        )
        _require(self.loss_on in ("label", "all"), "train.loss_on must be 'label' or 'all'")


DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:[0-9]{1,3})?")


@dataclass(frozen=True)
class ComputeConfig:
    """Where the shared base runs and in which precision. The adapter, its gradients and the
    DP arithmetic stay float32 whatever `base_dtype` is; what leaves a site is float32 on CPU.

    `device = "auto"` takes the first CUDA device when there is one, else the CPU (MPS only
    when asked for by name). Nothing here changes what is learned beyond float rounding."""

    device: str = AUTO
    base_dtype: BaseDtype = "float32"

    def __post_init__(self) -> None:
        _require(
            isinstance(self.device, str) and DEVICE_PATTERN.fullmatch(self.device) is not None,
            'compute.device must be "auto", "cpu", "cuda", "cuda:N" or "mps"',
        )
        _require(self.base_dtype in BASE_DTYPES, f"compute.base_dtype must be one of {BASE_DTYPES}")


@dataclass(frozen=True)
class LearningConfig:
    """Everything one site needs to learn; `base_model=None` means the built-in tiny base."""

    data: DataConfig = field(default_factory=DataConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    base_model: str | None = None
    compute: ComputeConfig = field(default_factory=ComputeConfig)

    def __post_init__(self) -> None:
        _require(
            self.adapter.kind != "full" or self.compute.base_dtype == "float32",
            'adapter.kind "full" trains the base itself, which must then be float32 '
            "(compute.base_dtype)",
        )


T = TypeVar("T")


def section_from_mapping(cls: type[T], raw: Mapping[str, Any], *, section: str) -> T:
    """Build one config dataclass from a TOML table, rejecting unknown keys."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"[{section}] has unknown keys: {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


def learning_config_from_mapping(raw: Mapping[str, Any]) -> LearningConfig:
    """Sections [data], [adapter], [dp], [train], [compute] plus top-level `base_model`;
    others ignored."""
    base = raw.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ConfigError("base_model must be a path string")
    return LearningConfig(
        data=section_from_mapping(DataConfig, raw.get("data", {}), section="data"),
        adapter=section_from_mapping(AdapterConfig, raw.get("adapter", {}), section="adapter"),
        dp=section_from_mapping(DPConfig, raw.get("dp", {}), section="dp"),
        train=section_from_mapping(TrainConfig, raw.get("train", {}), section="train"),
        base_model=base,
        compute=section_from_mapping(ComputeConfig, raw.get("compute", {}), section="compute"),
    )


def load_learning_config(path: str | Path) -> LearningConfig:
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    return learning_config_from_mapping(raw)
