"""A free-text or multiple-choice run's records carry what its evaluation measured: the
normalised accuracy and the token-weighted perplexity, with accuracy null (not NaN) when
the task has no candidates, from the gossiping peers and the centralized baseline alike."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gossipmed.learn.learner import EvalStats, Learner
from gossipmed.metrics import RoundRecord
from node.sim.config import sim_config_from_mapping
from node.sim.quadratic import QuadraticFactory
from node.sim.simulation import Simulation


class FreeTextLearner:
    """A quadratic learner whose evaluation reads like a free-text task's."""

    def __init__(self, inner: Learner) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def evaluate(self) -> EvalStats:
        loss = self.inner.evaluate().loss
        return EvalStats(loss=loss, accuracy=None, accuracy_norm=0.25, perplexity=3.5)


class FreeTextFactory:
    def __init__(self, inner: QuadraticFactory) -> None:
        self.inner = inner

    def site_learners(self) -> Sequence[Learner]:
        return [FreeTextLearner(x) for x in self.inner.site_learners()]  # type: ignore[misc]

    def pooled_learner(self) -> Learner:
        return FreeTextLearner(self.inner.pooled_learner())  # type: ignore[return-value]


def _check(records: Sequence[RoundRecord]) -> None:
    assert records
    for rec in records:
        assert (rec.accuracy, rec.accuracy_norm, rec.eval_perplexity) == (None, 0.25, 3.5)
        line = json.dumps(rec.to_json(), allow_nan=False)  # strict JSON: no NaN anywhere
        back = RoundRecord.from_json(json.loads(line))
        assert (back.accuracy, back.accuracy_norm, back.eval_perplexity) == (None, 0.25, 3.5)


def test_peers_and_the_central_baseline_record_norm_accuracy_and_perplexity() -> None:
    raw = {"sim": {"problem": "quadratic", "rounds": 2, "seed": 3}, "data": {"n_sites": 3}}
    config = sim_config_from_mapping(raw)
    factory = FreeTextFactory(QuadraticFactory(n_sites=3, seed=3, lr=0.1))
    simulation = Simulation(config, factory=factory)  # type: ignore[arg-type]
    _check([r for r in simulation.run_gossip().records if r.eval_loss is not None])
    _check([r for r in simulation.run_central().records if r.eval_loss is not None])
