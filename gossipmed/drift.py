"""Client-drift correction for non-IID gossip: D² (Tang et al., 2018) at round granularity.

With skewed data, plain gossip with local steps settles where each site's pull toward its
own optimum balances the pull of its neighbours: the sites agree only approximately and the
average is biased. D² removes that bias using only what gossip already sends (one state per
round, no extra tensors, unlike gradient tracking which would double the payload):

    g_t    = x_t - train(x_t)                      (the round's pseudo-gradient, lr folded in)
    v_t    = x_t - g_t + (x_t - x_{t-1}) + g_{t-1}  (plain step on the first round: v_0 = x_0 - g_0)
    x_{t+1} = sum_j W_ij v_j                        (the ordinary gossip mix of what was sent)

At a fixed point the correction terms cancel only when the average pseudo-gradient is zero,
i.e. at the consortium's optimum, not at a compromise between neighbours. D² needs the
mixing matrix's eigenvalues above -1/3 for its guarantee; Metropolis-Hastings on an even
ring sits exactly at -1/3, so by default the wrapper mixes lazily,
x_{t+1} = (v_i + sum_j W_ij v_j) / 2, whose eigenvalues are >= 0 (it costs some speed).

It wraps any `Learner`, so the gossip round does not change: the peer sends `get_state()`
after training (v_t) and hands the mixed state to `set_state`. A round where training did
not happen (privacy budget spent, site offline) restarts the correction from a plain step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from gossipmed.learner import AdapterState, EvalStats, Learner, TrainStats

DRIFT_MODES = ("none", "d2")


def _f64(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float64).clone() for k, v in state.items()}


class D2Learner:
    """A `Learner` that turns plain local training + gossip into D²."""

    def __init__(self, inner: Learner, *, lazy: bool = True) -> None:
        self.inner = inner
        self.lazy = lazy
        self._prev_x: dict[str, torch.Tensor] | None = None
        self._prev_g: dict[str, torch.Tensor] | None = None
        self._sent: dict[str, torch.Tensor] | None = None  # v_t, awaiting the mix

    def get_state(self) -> AdapterState:
        return self.inner.get_state()

    def set_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if self._sent is None:
            self._prev_x = self._prev_g = None  # no training this round: restart D²
            self.inner.set_state(state)
            return
        if self.lazy:
            state = {
                k: ((self._sent[k] + v.detach().to(torch.float64)) / 2).to(v.dtype)
                for k, v in state.items()
            }
        self._sent = None
        self.inner.set_state(state)

    def train_round(self, *, steps: int) -> TrainStats:
        x = _f64(self.inner.get_state())
        self._sent = None
        stats = self.inner.train_round(steps=steps)  # raises PrivacyBudgetExceeded when spent
        trained = self.inner.get_state()
        g = {k: x[k] - t.detach().to(torch.float64) for k, t in trained.items()}
        if self._prev_x is None or self._prev_g is None:
            v = {k: x[k] - g[k] for k in x}
        else:
            v = {k: 2 * x[k] - self._prev_x[k] - g[k] + self._prev_g[k] for k in x}
        self._prev_x, self._prev_g = x, g
        self._sent = v
        self.inner.set_state({k: v[k].to(trained[k].dtype) for k in v})
        return stats

    def evaluate(self) -> EvalStats:
        return self.inner.evaluate()

    def __getattr__(self, name: str) -> object:
        # save_adapter, evaluate_report, ... of the wrapped learner stay reachable
        return getattr(self.inner, name)


def with_drift_correction(learner: Learner, *, mode: str, lazy: bool = True) -> Learner:
    """`learner` itself for mode "none", wrapped for "d2"; anything else is a ValueError."""
    if mode == "none":
        return learner
    if mode == "d2":
        return D2Learner(learner, lazy=lazy)
    raise ValueError(f"unknown drift correction {mode!r}; choose one of {', '.join(DRIFT_MODES)}")
