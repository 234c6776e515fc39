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

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gossipmed.choice import NoParams, Spec
from gossipmed.errors import CheckpointError, WireError
from gossipmed.learn.learner import AdapterState, EvalStats, Learner, TrainStats
from gossipmed.registry import Registry
from gossipmed.wire.tensors import parse_shape

if TYPE_CHECKING:
    from gossipmed.privacy.ledger import PrivacyLedger

MEMORY_VERSION = 1


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

    def save_adapter(self, out: str | Path) -> Path:
        return self.inner.save_adapter(out)

    @property
    def ledger(self) -> PrivacyLedger | None:
        return self.inner.ledger

    # -- checkpoint of D²'s memory (tensors as shape/bytes, never pickle) ---------------------

    def state_dict(self) -> dict[str, Any] | None:
        """x_{t-1} and g_{t-1} (float64, as kept) for a checkpoint; only between rounds, when
        nothing awaits a mix. Without them a resumed site restarts D² with a plain step."""
        if self._sent is not None:
            raise CheckpointError("D² state saved in the middle of a round")
        prev_x, prev_g = self._prev_x, self._prev_g
        started = prev_x is not None and prev_g is not None
        return {
            "v": MEMORY_VERSION,
            "prev_x": _pack_f64(prev_x) if started and prev_x is not None else None,
            "prev_g": _pack_f64(prev_g) if started and prev_g is not None else None,
            "inner": self.inner.state_dict(),
        }

    def load_state_dict(
        self, state: Mapping[str, Any], *, schema: Mapping[str, tuple[Any, Any]]
    ) -> None:
        """Resume from `state_dict`; sizes are checked against the adapter schema (name ->
        (dtype, shape)) before anything is allocated. Call after the adapter state is set
        (`set_state` outside a round resets D²)."""
        shapes = {name: tuple(int(s) for s in shape) for name, (_dtype, shape) in schema.items()}
        if not isinstance(state, Mapping) or set(state) != {"v", "prev_x", "prev_g", "inner"}:
            raise WireError("D² state must be a map of v, prev_x, prev_g, inner")
        if state["inner"] is not None:
            self.inner.load_state_dict(state["inner"], schema=schema)
        if state["v"] != MEMORY_VERSION or type(state["v"]) is not int:
            raise WireError(f"unsupported D² state version {str(state['v'])[:20]}")
        if (state["prev_x"] is None) != (state["prev_g"] is None):
            raise WireError("D² state has one of prev_x, prev_g without the other")
        if state["prev_x"] is None:
            self._prev_x = self._prev_g = None
            return
        self._prev_x = _unpack_f64(state["prev_x"], shapes)
        self._prev_g = _unpack_f64(state["prev_g"], shapes)


DriftWrap = Callable[[Learner], Learner]

DRIFT: Registry[Spec[DriftWrap]] = Registry("drift correction")
DRIFT.register(
    "none", Spec(name="none", build=lambda _p: lambda learner: learner, summary="plain gossip")
)
DRIFT.register(
    "d2",
    Spec(
        name="d2",
        build=lambda _p: lambda learner: D2Learner(learner),
        params=NoParams,
        summary="D² exact diffusion: removes the non-IID bias of gossip with local steps",
    ),
)
DRIFT_MODES = DRIFT.names()


def with_drift_correction(learner: Learner, *, mode: str) -> Learner:
    """`learner` itself for mode "none", wrapped for "d2"; anything else is a ConfigError."""
    return DRIFT.get(mode).build(NoParams())(learner)


def _pack_f64(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out = {}
    for name, t in state.items():
        arr = t.detach().to(torch.float64).contiguous().cpu().numpy()
        out[name] = {"shape": list(arr.shape), "data": arr.astype("<f8", copy=False).tobytes()}
    return out


def _unpack_f64(obj: object, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or set(obj) != set(shapes):
        raise WireError("D² state tensors differ from the adapter schema")
    out = {}
    for name, shape in shapes.items():
        rec = obj[name]
        if not isinstance(rec, dict) or set(rec) != {"shape", "data"}:
            raise WireError(f"D² tensor {name!r} must be a map of shape, data")
        if parse_shape(rec["shape"], name=name) != shape:
            raise WireError(f"D² tensor {name!r} has the wrong shape")
        data = rec["data"]
        if not isinstance(data, bytes) or len(data) != 8 * math.prod(shape):
            raise WireError(f"D² tensor {name!r}: data must be {8 * math.prod(shape)} bytes")
        tensor = torch.from_numpy(np.frombuffer(data, dtype="<f8").astype(np.float64))
        if not bool(torch.isfinite(tensor).all()):
            raise WireError(f"D² tensor {name!r} is not finite")
        out[name] = tensor.reshape(shape)
    return out
