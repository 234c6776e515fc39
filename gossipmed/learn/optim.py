"""Per-site optimisers over a flat adapter state: plain SGD or Adam.

Many sites share one model object, so optimiser state cannot live in a torch optimiser bound
to its parameters; each `SiteLearner` keeps its own moments here and applies the step to the
shared model after loading its state. Adam on the privatised gradient is post-processing, so
it costs no privacy. Gossip averages only the adapter tensors; a site's moments stay its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

State = dict[str, torch.Tensor]


class SiteOptimizer:
    """`step(params, grads)` updates `params` in place (tensors of the shared model)."""

    def __init__(
        self, *, kind: str, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
    ) -> None:
        if kind not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind = kind
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.t = 0
        self.m: State = {}
        self.v: State = {}

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor]) -> None:
        if self.kind == "sgd":
            for n, p in params.items():
                p.add_(grads[n], alpha=-self.lr)
            return
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for n, p in params.items():
            g = grads[n]
            m = self.m.setdefault(n, torch.zeros_like(p))
            v = self.v.setdefault(n, torch.zeros_like(p))
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)
