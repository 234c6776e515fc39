"""One site's learning (the `Learner` protocol) and the factory that sets up many sites.

All sites of a process share ONE `AdapterModel`; a `SiteLearner` owns only its trainable
tensors, data, privacy ledger and RNG, loads its state into the shared model for a round and
reads it back; its optimiser moments (Adam) stay in the learner, so swapping is exact.

The RNG that draws a site's Poisson batches and DP noise is always passed in (a
`gossipmed.privacy.randomness.RandomSource`): from the OS for a real site, seeded only in
simulations.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gossipmed.errors import ModelError, PrivacyError
from gossipmed.learn.config import LearningConfig
from gossipmed.learn.data import EncodedSet, Encoder, FitCounts
from gossipmed.learn.datasets import TaskDataset, load_dataset
from gossipmed.learn.evaluate import EvalReport, EvalSet, build_eval_set, evaluate
from gossipmed.learn.learner import AdapterState, EvalStats, TrainStats
from gossipmed.learn.model import AdapterModel, expected_schema
from gossipmed.learn.optim import SiteOptimizer
from gossipmed.learn.partition import partition
from gossipmed.privacy.dp import add_noise, calibrate_noise, poisson_sample
from gossipmed.privacy.ledger import PrivacyLedger
from gossipmed.privacy.randomness import RandomSource, site_seed

__all__ = [
    "RandomSource",
    "SiteLearner",
    "SiteSetup",
    "build_site_learners",
    "load_shared_model",
    "resolve_base_model",
    "site_seed",
]

log = logging.getLogger(__name__)


class SiteLearner:
    """Implements `gossipmed.learn.learner.Learner` for one site."""

    def __init__(
        self,
        *,
        name: str,
        index: int,
        model: AdapterModel,
        train_data: EncodedSet,
        eval_set: EvalSet,
        config: LearningConfig,
        ledger: PrivacyLedger | None,
        generator: torch.Generator,
        fit_counts: FitCounts | None = None,
    ) -> None:
        if config.dp.enabled and ledger is None:
            raise PrivacyError("a DP learner needs a privacy ledger")
        self.name = name
        self.index = index
        self.model = model
        self.train_data = train_data
        self.eval_set = eval_set
        self.config = config
        self.ledger = ledger
        self.sample_rate = min(1.0, config.train.batch_size / len(train_data))
        self.generator = generator  # Poisson sampling and DP noise: the caller's source
        # prompts cut or examples dropped to fit max_length (all sites' data): local only
        self.fit_counts = fit_counts or FitCounts()
        self.microbatch = config.train.microbatch or model.auto_microbatch(
            seq_len=config.data.max_length, response_tokens=_response_tokens(train_data)
        )
        self._state = {k: v.clone() for k, v in model.initial_state.items()}
        self.noise_multiplier = self._noise_multiplier() if config.dp.enabled else None
        self.last_grad_norms = torch.zeros(0)  # unclipped per-sample norms of the last DP step
        self.optimizer = SiteOptimizer(kind=config.train.optimizer, lr=config.train.lr)

    def _noise_multiplier(self) -> float:
        dp = self.config.dp
        if dp.noise_multiplier is not None:
            return dp.noise_multiplier
        return calibrate_noise(
            target_epsilon=dp.epsilon,
            delta=dp.delta,
            sample_rate=self.sample_rate,
            steps=dp.planned_steps,
            accountant=dp.accountant,
        )

    # --- Learner protocol ------------------------------------------------------------------
    def get_state(self) -> AdapterState:
        return {k: v.clone() for k, v in self._state.items()}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if expected_schema(state) != expected_schema(self._state):
            raise ModelError("adapter state does not match this site's schema")
        self._state = {k: v.detach().to("cpu", copy=True) for k, v in state.items()}

    @property
    def epsilon(self) -> float:
        return self.ledger.epsilon if self.ledger is not None else math.inf

    def train_round(self, *, steps: int) -> TrainStats:
        """`steps` Poisson-sampled SGD steps; with DP the whole round is charged first."""
        if steps < 1:
            raise ValueError("steps must be >= 1")
        start = time.perf_counter()
        if self.noise_multiplier is not None:
            assert self.ledger is not None
            self.ledger.charge(
                noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=steps
            )
        self.model.load_state(self._state)
        losses: list[float] = []
        seen = 0
        n = len(self.train_data)
        for _ in range(steps):
            idx = poisson_sample(n, sample_rate=self.sample_rate, generator=self.generator)
            batch = self.train_data.subset(idx)
            seen += len(idx)
            if self.noise_multiplier is not None:
                clip_norm = self.config.dp.clip_norm
                clipped = self.model.clipped_grad_sum(
                    batch.input_ids,
                    batch.loss_mask,
                    clip_norm=clip_norm,
                    microbatch=self.microbatch,
                )
                grad = add_noise(
                    clipped.grads,
                    clip_norm=clip_norm,
                    noise_multiplier=self.noise_multiplier,
                    expected_batch=self.sample_rate * n,
                    generator=self.generator,
                )
                self.last_grad_norms = clipped.norms
                if len(clipped.losses):
                    losses.append(float(clipped.losses.mean()))
            else:
                if len(idx) == 0:
                    continue
                grad, mean_loss = self.model.mean_grad(
                    batch.input_ids, batch.loss_mask, microbatch=self.microbatch
                )
                losses.append(mean_loss)
            self.model.apply_update(grad, optimizer=self.optimizer)
        self._state = self.model.read_state()
        return TrainStats(
            train_loss=sum(losses) / len(losses) if losses else math.nan,
            epsilon=self.epsilon,
            n_examples=seen,
            steps=steps,
            seconds=time.perf_counter() - start,
        )

    def evaluate(self) -> EvalStats:
        report = self.evaluate_report()
        return EvalStats(
            loss=report.loss,
            accuracy=report.accuracy,
            accuracy_norm=report.accuracy_norm,
            perplexity=report.perplexity,
        )

    # --- extras ---------------------------------------------------------------------------
    def evaluate_report(self) -> EvalReport:
        self.model.load_state(self._state)
        return evaluate(self.model, self.eval_set)

    def save_adapter(self, out: str | Path) -> Path:
        """This site's adapter in PEFT format (loadable with PeftModel.from_pretrained)."""
        self.model.load_state(self._state)
        return self.model.save(out)

    def state_dict(self) -> dict[str, Any] | None:
        """Nothing beyond the adapter today: Adam's moments restart after a resume."""
        return None

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None:
        raise ModelError("this learner keeps no state besides its adapter")


@dataclass
class SiteSetup:
    """What the simulator/daemon needs: the shared model, one learner per site, the test set."""

    model: AdapterModel
    learners: list[SiteLearner]
    eval_set: EvalSet
    dataset: TaskDataset
    encoder: Encoder
    fit_counts: FitCounts = field(default_factory=FitCounts)


def _response_tokens(data: EncodedSet) -> int:
    """The most target tokens of one training row (where the loss takes logits)."""
    if len(data) == 0:
        return 0
    return int(data.loss_mask[:, 1:].sum(dim=1).max())


_REPORTED: set[tuple[str, int, FitCounts]] = set()


def report_fit(dataset: TaskDataset, *, max_length: int, counts: FitCounts) -> None:
    """Say once per process how many prompts max_length cut and how many examples it
    dropped. Counted on the site's own records without noise, so they are printed (stderr,
    the daemon's own log) and never written into anything a peer receives."""
    key = (dataset.name, max_length, counts)
    if (not counts.truncated and not counts.dropped) or key in _REPORTED:
        return
    _REPORTED.add(key)
    log.warning(
        "%s: data.max_length %d cut the prompt of %d examples and dropped %d whose "
        "response alone does not fit (these counts stay on this site)",
        dataset.name,
        max_length,
        counts.truncated,
        counts.dropped,
    )


def resolve_base_model(config: LearningConfig, *, progress: bool = False) -> Path:
    if config.base_model is not None:
        return Path(config.base_model)
    from gossipmed.learn.base_model import ensure_base_model

    return ensure_base_model(progress=progress)


def load_shared_model(config: LearningConfig, *, progress: bool = False) -> AdapterModel:
    """The one base + adapter of this process, on `config.compute`'s device and dtype."""
    from gossipmed.learn.compute import resolve_device

    resolve_device(config.compute.device)  # a missing GPU fails before any build or load
    return AdapterModel.from_pretrained(
        resolve_base_model(config, progress=progress), config.adapter, compute=config.compute
    )


def _ledger(
    config: LearningConfig, name: str, ledger_dir: str | Path | None
) -> PrivacyLedger | None:
    if not config.dp.enabled:
        return None
    dp = config.dp
    if ledger_dir is None:
        return PrivacyLedger(budget=dp.epsilon, delta=dp.delta, accountant=dp.accountant)
    path = Path(ledger_dir) / f"{name}.ledger.json"
    return PrivacyLedger.open(path, budget=dp.epsilon, delta=dp.delta, accountant=dp.accountant)


@dataclass(frozen=True)
class _Split:
    dataset: TaskDataset
    encoder: Encoder
    eval_set: EvalSet
    train_all: EncodedSet
    names: list[str]
    parts: list[list[int]]
    fit_counts: FitCounts


def _split(config: LearningConfig, model: AdapterModel, *, pooled: bool) -> _Split:
    dc = config.data
    model.check_max_length(dc.max_length)
    loaded = load_dataset(dc)
    encoder = Encoder(model.tokenizer, dataset=loaded, max_length=dc.max_length)
    dataset, counts = encoder.fit_dataset(loaded)
    report_fit(dataset, max_length=dc.max_length, counts=counts)
    eval_set = build_eval_set(encoder, dataset, loss_on=config.train.loss_on)
    train_all = encoder.encode(dataset.train, loss_on=config.train.loss_on)
    if pooled:
        every = [list(range(len(dataset.train)))]
        return _Split(dataset, encoder, eval_set, train_all, ["pooled"], every, counts)
    parts = partition(
        dataset.train,
        scheme=dc.partition,
        n_sites=dc.n_sites,
        alpha=dc.alpha,
        seed=dc.seed,
        natural_sites=dataset.natural_sites,
    )
    names = (
        list(dataset.natural_sites)
        if dc.partition == "natural"
        else [f"site-{k}" for k in range(dc.n_sites)]
    )
    return _Split(dataset, encoder, eval_set, train_all, names, [list(p) for p in parts], counts)


def _learner(
    split: _Split,
    k: int,
    *,
    config: LearningConfig,
    model: AdapterModel,
    ledger: PrivacyLedger | None,
    randomness: RandomSource,
) -> SiteLearner:
    return SiteLearner(
        name=split.names[k],
        index=k,
        model=model,
        train_data=split.train_all.subset(torch.tensor(split.parts[k], dtype=torch.long)),
        eval_set=split.eval_set,
        config=config,
        ledger=ledger,
        generator=randomness.generator(k),
        fit_counts=split.fit_counts,
    )


def build_site_learners(
    config: LearningConfig,
    *,
    randomness: RandomSource,
    model: AdapterModel | None = None,
    ledger_dir: str | Path | None = None,
    pooled: bool = False,
    progress: bool = False,
    only: Collection[int] | None = None,
) -> SiteSetup:
    """Partition the dataset over `config.data.n_sites` sites sharing one model.

    `pooled=True` gives the centralised baseline: one learner on the union of all sites'
    data, with the same DP, batch and step settings. `model` lets callers reuse an already
    loaded shared model (it must carry the configured adapter). `randomness` gives each
    site's sampling and noise generator: `RandomSource.from_os()` for a real site,
    `RandomSource.seeded(config.train.seed)` for reproducible simulations and tests.
    """
    model = model or load_shared_model(config, progress=progress)
    split = _split(config, model, pooled=pooled)
    learners = [
        _learner(
            split,
            k,
            config=config,
            model=model,
            ledger=_ledger(config, name, ledger_dir),
            randomness=randomness,
        )
        for k, name in enumerate(split.names)
        if only is None or k in only  # a simulation host builds only the sites it holds
    ]
    return SiteSetup(
        model=model,
        learners=learners,
        eval_set=split.eval_set,
        dataset=split.dataset,
        encoder=split.encoder,
        fit_counts=split.fit_counts,
    )


def build_site_learner(
    config: LearningConfig,
    *,
    site: int,
    ledger: PrivacyLedger | None,
    randomness: RandomSource,
    progress: bool = False,
) -> SiteLearner:
    """One site's learner, its ledger given (a daemon: the site's own, checked ledger)."""
    if config.dp.enabled and ledger is None:
        raise PrivacyError("a DP learner needs its privacy ledger")
    if not 0 <= site < config.data.n_sites:
        raise PrivacyError(f"site index {site} is outside 0..{config.data.n_sites - 1}")
    model = load_shared_model(config, progress=progress)
    split = _split(config, model, pooled=False)
    return _learner(split, site, config=config, model=model, ledger=ledger, randomness=randomness)
