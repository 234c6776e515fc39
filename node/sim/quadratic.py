"""The synthetic quadratic problem: sites that learn in microseconds, for protocol experiments.

Site i minimises 0.5||x - c_i||^2; the consortium's optimum is mean(c_i). Topology, faults,
codecs and attacks can be studied on it without a model; the daemon runs it too
(`[daemon] problem = "quadratic"`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from gossipmed.errors import ModelError
from gossipmed.learn.learner import AdapterState, EvalStats, Learner, TrainStats
from gossipmed.privacy.ledger import PrivacyLedger
from gossipmed.storage.checkpoint import save_state


class QuadraticLearner:
    """Accuracy is the fraction of coordinates whose sign matches the consortium optimum's,
    so a site that only learns its own skewed c_i scores visibly below one that gossips."""

    def __init__(
        self,
        *,
        start: torch.Tensor,
        target: torch.Tensor,
        consensus_target: torch.Tensor,
        lr: float,
    ) -> None:
        self.x = start.clone()
        self.target = target
        self.consensus_target = consensus_target
        self.lr = lr

    @property
    def ledger(self) -> PrivacyLedger | None:
        return None

    def get_state(self) -> AdapterState:
        return {"x": self.x}

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self.x = state["x"].detach().clone().to(torch.float32)

    def train_round(self, *, steps: int) -> TrainStats:
        started = time.perf_counter()
        for _ in range(steps):
            self.x = self.x - self.lr * (self.x - self.target)
        loss = 0.5 * float(((self.x - self.target) ** 2).mean())
        return TrainStats(
            train_loss=loss,
            epsilon=0.0,
            n_examples=1,
            steps=steps,
            seconds=time.perf_counter() - started,
        )

    def evaluate(self) -> EvalStats:
        loss = 0.5 * float(((self.x - self.consensus_target) ** 2).mean())
        agree = (torch.sign(self.x) == torch.sign(self.consensus_target)).float().mean()
        return EvalStats(loss=loss, accuracy=float(agree))

    def save_adapter(self, out: str | Path) -> Path:
        save_state(Path(out), self.get_state(), {"problem": "quadratic"})
        return Path(out)

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: Mapping[str, Any], *, schema: Mapping[str, Any]) -> None:
        raise ModelError("the quadratic learner keeps no state besides x")


class QuadraticFactory:
    def __init__(
        self, *, n_sites: int, seed: int, lr: float, dim: int = 256, heterogeneity: float = 2.0
    ) -> None:
        # float32 like real adapters (the envelope refuses float64 on the wire)
        gen = torch.Generator().manual_seed(seed)
        self.consensus = torch.randn(dim, generator=gen)
        skew = torch.randn(n_sites, dim, generator=gen) * heterogeneity
        skew -= skew.mean(dim=0, keepdim=True)  # so mean(c_i) is exactly the consensus optimum
        self.targets = self.consensus + skew
        self.starts = torch.randn(n_sites, dim, generator=gen)
        self.lr = lr

    def site_learners(self) -> Sequence[Learner]:
        return [
            QuadraticLearner(
                start=self.starts[i],
                target=self.targets[i],
                consensus_target=self.consensus,
                lr=self.lr,
            )
            for i in range(len(self.targets))
        ]

    def pooled_learner(self) -> Learner:
        return QuadraticLearner(
            start=self.starts.mean(dim=0),
            target=self.consensus,
            consensus_target=self.consensus,
            lr=self.lr,
        )
