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

DatasetName = Literal["icd10", "heart", "notes", "user", "medqa-mc", "medqa-text"]
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

# Tokens per example (prompt + answer) when `data.max_length` is left to the dataset: the
# label tasks keep 64; the QA sets hold definitions of up to 60 words plus four options.
DEFAULT_MAX_LENGTH = 64
DATASET_MAX_LENGTH: dict[str, int] = {"medqa-mc": 192, "medqa-text": 192}

# Per-sample LoRA (q/v, rank 8) gradient norms on the tiny base's icd10 label loss are ~4-13
# (10th-90th percentile, measured; docs/benchmarks/local-training.md): clip 1.0 clips nearly
# every sample, so each example contributes a unit direction and the noise std equals sigma exactly.
DEFAULT_CLIP_NORM = 1.0
# Adam on the privatised gradient (post-processing) beat plain SGD clearly
# (docs/benchmarks/local-training.md).
# 0.02, not the 0.01 that is best for one site alone: gossip averages the sites' DP noise,
# which tolerates a larger step (8-site icd10 ring, 20 rounds: 0.202 at 0.02, 0.170 at 0.01).
DEFAULT_LR = 0.02


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "icd10"
    """Which task to learn: a built-in dataset ("icd10", "heart", "notes") or "user" for your own
    files under `path`."""
    n_sites: int = 4
    """How many sites the pooled data is split across (a simulation's number of sites)."""
    partition: PartitionScheme = "dirichlet"
    """How examples are split across sites: "natural" (by each example's own site), "iid", or
    "dirichlet" label skew."""
    alpha: float = 0.5
    """Dirichlet concentration for `partition = "dirichlet"`; small values give strong label
    skew."""
    seed: int = 0
    """Seed of the split and of the held-out evaluation sample."""
    path: str | None = None
    """Your data for `dataset = "user"`: a .jsonl/.txt file or a folder of them (relative to the
    site folder in site.toml)."""
    max_train_examples: int = 20000
    """Pooled training examples kept before the split (keeps runs fast)."""
    eval_size: int = 300
    """Held-out examples every site evaluates on."""
    max_length: int = 0
    """Tokens per example, prompt and answer together; 0 (or "auto" in TOML) = the dataset's
    default: 64 for icd10, heart, notes and user, 192 for medqa-mc and medqa-text."""

    def __post_init__(self) -> None:
        _require(self.dataset in DATASETS, f"data.dataset must be one of {DATASETS}")
        _require(self.partition in PARTITIONS, f"data.partition must be one of {PARTITIONS}")
        _require(1 <= self.n_sites <= 16384, "data.n_sites must be in 1..16384")
        _require(self.alpha > 0 and math.isfinite(self.alpha), "data.alpha must be > 0")
        _require(self.max_train_examples >= self.n_sites, "data.max_train_examples < n_sites")
        _require(self.eval_size >= 1, "data.eval_size must be >= 1")
        if self.max_length in (0, AUTO):
            default = DATASET_MAX_LENGTH.get(self.dataset, DEFAULT_MAX_LENGTH)
            object.__setattr__(self, "max_length", default)
        _require(
            isinstance(self.max_length, int) and not isinstance(self.max_length, bool),
            'data.max_length must be "auto" or an integer',
        )
        _require(8 <= self.max_length <= 4096, "data.max_length must be in 8..4096")
        _require(
            self.dataset != "user" or self.path is not None, "data.path is required for user data"
        )


@dataclass(frozen=True)
class AdapterConfig:
    kind: AdapterKind = "lora"
    """What is trained on top of the frozen base: "lora", "ffa_lora" (LoRA with frozen shared A
    matrices), "prompt" (prompt tuning) or "full" (the whole base)."""
    rank: int = 8
    """LoRA rank."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by lora_alpha / rank)."""
    # None (or "auto" in TOML) = chosen per architecture: peft's default for the model type,
    # else the attention's query/value (or fused qkv) projections; q_proj, v_proj on Llama
    target_modules: tuple[str, ...] | None = None
    """"auto" (or omitted) chooses per architecture (q_proj and v_proj on Llama, the fused qkv
    projection where there is one); or a list of module names."""
    num_virtual_tokens: int = 8
    """Prompt tuning: the number of trained virtual tokens."""
    shared_seed: int = 1234
    """FFA-LoRA: the consortium-wide seed of the frozen A matrices (every site must use the
    same)."""

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
    """Train with DP-SGD (per-example clipping and Gaussian noise); false trains without privacy."""
    epsilon: float = 8.0
    """The site's total privacy budget at `delta`; the noise is calibrated to last
    `planned_steps`."""
    delta: float = 1e-5
    """The DP delta of the budget (well below 1 / number of the site's examples)."""
    clip_norm: float = DEFAULT_CLIP_NORM
    """Per-example gradient clipping norm."""
    noise_multiplier: float | None = None
    """Noise standard deviation relative to `clip_norm`; omit it to calibrate from `epsilon`."""
    planned_steps: int = 400
    """Training steps the calibrated noise must last for: with `noise_multiplier` omitted,
    the noise is sized so that this many steps spend `epsilon`."""
    accountant: AccountantName = "rdp"
    """Privacy accountant: "rdp" (Renyi DP) or "prv" (numerical PRV accountant)."""

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
    """Learning rate of the local optimizer."""
    # expected batch (Poisson rate = batch_size / n_site); under DP bigger batches pay off
    # (icd10 eps 8, 150 steps: 0.19 accuracy at 64, 0.24 at 128; docs/benchmarks/local-training.md)
    batch_size: int = 128
    """Expected batch size (Poisson sampling rate = batch_size / the site's examples)."""
    # 20 local steps per round: within 20 rounds, the number of steps is what limits
    # accuracy, not consensus (docs/benchmarks/simulator.md, "8 sites, ring")
    steps_per_round: int = 20
    """Local optimizer steps between two gossip exchanges."""
    # examples per forward/backward pass, private or not: peak memory follows it, results do
    # not (the logical batch is summed across micro-batches). None (or "auto" in TOML) sizes
    # it from the model's shape (gossipmed.learn.compute.auto_microbatch).
    microbatch: int | None = None
    """Examples per forward/backward pass: "auto" (or omitted) sizes it from the model; memory
    follows it, results do not."""
    loss_on: LossOn = "label"
    """Labelled data: "label" trains and evaluates on the label tokens only, "all" on every
    token."""
    seed: int = 0
    """Seed of batch sampling and of the adapter's initialisation."""
    optimizer: OptimizerName = "adam"
    """"adam" or "sgd"; optimizer state stays on the site."""

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
    """"auto" (first CUDA device, else CPU), "cpu", "cuda", "cuda:N" or "mps"."""
    base_dtype: BaseDtype = "float32"
    """Precision of the frozen base: "float32", "bfloat16" or "float16" (the adapter stays
    float32)."""

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
    """The `[data]` table."""
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    """The `[adapter]` table."""
    dp: DPConfig = field(default_factory=DPConfig)
    """The `[dp]` table."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The `[train]` table."""
    base_model: str | None = None
    """A local Hugging Face model folder to fine-tune; omitted: the built-in tiny base."""
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    """The `[compute]` table."""

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
