"""Micro-batching bounds memory without changing what is learned: the noisy DP gradient and
the non-private gradient of a logical batch are the same for any micro-batch size, and no
more than one micro-batch of per-example gradients ever exists at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import gossipmed.learn.model as model_mod
from gossipmed.learn.config import AdapterConfig, DataConfig, DPConfig, LearningConfig, TrainConfig
from gossipmed.learn.model import AdapterModel
from gossipmed.learn.train import build_site_learners
from gossipmed.privacy.dp import add_noise
from gossipmed.privacy.randomness import RandomSource

BATCH = 20


@pytest.fixture(scope="module")
def model(tiny_base: Path) -> AdapterModel:
    m = AdapterModel.from_pretrained(tiny_base, AdapterConfig(kind="lora", rank=4))
    g = torch.Generator().manual_seed(1)
    m.load_state(
        {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in m.read_state().items()}
    )
    return m


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (BATCH, 14), generator=g)
    lengths = torch.randint(8, 15, (BATCH,), generator=g)  # ragged: trimming differs per chunk
    mask = torch.zeros(BATCH, 14)
    for i, n in enumerate(lengths.tolist()):
        mask[i, 6:n] = 1.0
    return ids, mask


def _noisy(model: AdapterModel, microbatch: int) -> dict[str, torch.Tensor]:
    ids, mask = _batch()
    clipped = model.clipped_grad_sum(ids, mask, clip_norm=0.05, microbatch=microbatch)
    gen = torch.Generator().manual_seed(7)  # the noise source, fixed
    return add_noise(
        clipped.grads, clip_norm=0.05, noise_multiplier=0.5, expected_batch=16.0, generator=gen
    )


def test_noisy_gradient_is_the_same_for_micro_batches_1_7_and_all(model: AdapterModel) -> None:
    ref = _noisy(model, BATCH)
    for size in (1, 7):
        got = _noisy(model, size)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7)


def test_clipping_is_per_example_across_micro_batches(model: AdapterModel) -> None:
    ids, mask = _batch()
    per_sample, _ = model.per_sample_grads(ids, mask, microbatch=BATCH)
    norms = torch.sqrt(
        sum(g.reshape(BATCH, -1).double().pow(2).sum(1) for g in per_sample.values())
    )
    clipped = model.clipped_grad_sum(ids, mask, clip_norm=0.05, microbatch=7)
    torch.testing.assert_close(clipped.norms, norms, rtol=1e-5, atol=1e-9)
    scale = (0.05 / norms).clamp(max=1.0).float()
    for k, g in per_sample.items():
        expected = torch.einsum("b,b...->...", scale, g)
        torch.testing.assert_close(clipped.grads[k], expected, rtol=1e-5, atol=1e-7)


def test_non_private_gradient_is_the_same_for_any_micro_batch(model: AdapterModel) -> None:
    ids, mask = _batch()
    ref, ref_loss = model.mean_grad(ids, mask)
    for size in (1, 7):
        got, loss = model.mean_grad(ids, mask, microbatch=size)
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7)


def test_per_example_gradients_exist_one_micro_batch_at_a_time(
    model: AdapterModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real = model_mod.clip_sum

    def spy(per_sample: dict[str, torch.Tensor], **kw: float) -> object:
        seen.append(int(next(iter(per_sample.values())).shape[0]))
        return real(per_sample, **kw)

    monkeypatch.setattr(model_mod, "clip_sum", spy)
    ids, mask = _batch()
    model.clipped_grad_sum(ids, mask, clip_norm=1.0, microbatch=7)
    assert seen == [7, 7, 6]


@pytest.mark.slow
def test_training_rounds_agree_across_micro_batch_sizes(tiny_base: Path) -> None:
    """The whole DP round (sampling, clipping, noise, Adam) with seeded randomness."""
    states = []
    for size in (1, 7, 64):
        config = LearningConfig(
            data=DataConfig(
                dataset="notes", n_sites=2, partition="natural", max_train_examples=80, eval_size=4
            ),
            adapter=AdapterConfig(kind="lora", rank=2),
            dp=DPConfig(epsilon=8.0, planned_steps=10),
            train=TrainConfig(batch_size=16, microbatch=size, optimizer="sgd", lr=0.5),
            base_model=str(tiny_base),
        )
        setup = build_site_learners(config, randomness=RandomSource.seeded(3))
        site = setup.learners[0]
        assert site.microbatch == size
        site.train_round(steps=2)
        states.append(site.get_state())
    for other in states[1:]:
        for k in states[0]:
            torch.testing.assert_close(other[k], states[0][k], rtol=1e-4, atol=1e-6)
