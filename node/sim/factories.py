"""Where a simulation's learners come from: the language model, or the quadratic problem.

A factory builds every site's learner at once so they can share what is shareable (one
frozen base model in memory) and builds the centralized baseline's pooled learner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Protocol

from gossipmed.errors import ConfigError
from gossipmed.learn.config import LearningConfig
from gossipmed.learn.learner import Learner
from gossipmed.privacy.randomness import RandomSource
from node.sim.config import SimConfig
from node.sim.quadratic import QuadraticFactory


class LearnerFactory(Protocol):
    def site_learners(self) -> Sequence[Learner]:
        """Fresh learners (new state, new privacy ledger), one per site, in site order."""
        ...

    def pooled_learner(self) -> Learner:
        """One learner on all sites' data pooled (the centralized baseline)."""
        ...


def default_factory(config: SimConfig) -> LearnerFactory:
    if config.sim.problem == "quadratic":
        return QuadraticFactory(
            n_sites=config.nodes, seed=config.sim.seed, lr=min(config.learning.train.lr, 1.0)
        )
    return LanguageModelFactory(config.learning, rounds=config.sim.rounds)


def _planned(learning: LearningConfig, steps: int) -> LearningConfig:
    """Calibrated DP noise must last exactly the steps this run will take."""
    return dataclasses.replace(learning, dp=dataclasses.replace(learning.dp, planned_steps=steps))


class LanguageModelFactory:
    """gossipmed.learn.train learners; every site (and every baseline) shares one loaded model.

    Each site plans its noise for rounds x steps_per_round steps; the centralized baseline
    runs n_sites times as many steps (on n_sites times the data), so its noise is calibrated
    for those, reaching the same epsilon budget by the last round.
    """

    def __init__(self, learning: LearningConfig, *, rounds: int) -> None:
        from gossipmed.learn.train import load_shared_model

        site_steps = rounds * learning.train.steps_per_round
        self.learning = _planned(learning, site_steps)
        self.pooled = _planned(learning, site_steps * learning.data.n_sites)
        self.model = load_shared_model(learning, progress=False)
        # a simulation is reproducible on purpose: its DP draws come from the seed
        self.randomness = RandomSource.seeded(learning.train.seed)

    def site_learners(self) -> Sequence[Learner]:
        from gossipmed.learn.train import build_site_learners

        return build_site_learners(
            self.learning, model=self.model, randomness=self.randomness
        ).learners

    def learners_for(self, indices: Collection[int]) -> dict[int, Learner]:
        """Fresh learners of these sites only (a simulation host's share), by site index:
        a host never builds, nor calibrates the noise of, the sites it does not hold."""
        from gossipmed.learn.train import build_site_learners

        wanted = sorted(set(indices))
        learners = build_site_learners(
            self.learning, model=self.model, randomness=self.randomness, only=wanted
        ).learners
        if len(learners) != len(wanted):
            raise ConfigError(
                f"the data gives fewer sites than the {self.learning.data.n_sites} asked for"
            )
        return dict(zip(wanted, learners, strict=True))

    def pooled_learner(self) -> Learner:
        from gossipmed.learn.train import build_site_learners

        return build_site_learners(
            self.pooled, model=self.model, pooled=True, randomness=self.randomness
        ).learners[0]
