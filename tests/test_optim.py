"""Per-site optimisers: Adam here is torch's Adam, and each site's moments stay its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gossipmed.learn.config import AdapterConfig, DataConfig, DPConfig, LearningConfig, TrainConfig
from gossipmed.learn.optim import SiteOptimizer
from gossipmed.learn.train import build_site_learners
from gossipmed.privacy.randomness import RandomSource


def test_site_adam_matches_torch_adam() -> None:
    g = torch.Generator().manual_seed(0)
    ours = {"w": torch.randn(4, 3, generator=g)}
    ref = torch.nn.Parameter(ours["w"].clone())
    torch_adam = torch.optim.Adam([ref], lr=0.01)
    site_adam = SiteOptimizer(kind="adam", lr=0.01)
    for _ in range(5):
        grad = torch.randn(4, 3, generator=g)
        site_adam.step(ours, {"w": grad})
        ref.grad = grad.clone()
        torch_adam.step()
    torch.testing.assert_close(ours["w"], ref.detach(), rtol=1e-6, atol=1e-7)


def test_unknown_optimizer_is_refused() -> None:
    with pytest.raises(ValueError):
        SiteOptimizer(kind="lion", lr=0.1)


@pytest.mark.slow
def test_interleaving_another_site_does_not_change_a_sites_adam_trajectory(
    tiny_base: Path,
) -> None:
    cfg = LearningConfig(
        data=DataConfig(
            dataset="notes", n_sites=2, partition="natural", max_train_examples=80, eval_size=4
        ),
        adapter=AdapterConfig(kind="lora", rank=2),
        dp=DPConfig(enabled=True, epsilon=8.0, planned_steps=10),
        train=TrainConfig(optimizer="adam", batch_size=8),
        base_model=str(tiny_base),
    )
    alone = build_site_learners(cfg, randomness=RandomSource.seeded(0))
    alone.learners[0].train_round(steps=2)
    alone.learners[0].train_round(steps=2)
    mixed = build_site_learners(cfg, randomness=RandomSource.seeded(0), model=alone.model)
    mixed.learners[0].train_round(steps=2)
    mixed.learners[1].train_round(steps=2)  # moves the shared model and has its own moments
    mixed.learners[0].train_round(steps=2)
    a, b = alone.learners[0].get_state(), mixed.learners[0].get_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert mixed.learners[0].optimizer.t == 4 and mixed.learners[1].optimizer.t == 2
