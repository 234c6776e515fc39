"""Packed label scoring (one row per example) equals the one-row-per-pair reference."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gossipmed.learn.config import AdapterConfig, DataConfig, DPConfig, LearningConfig
from gossipmed.learn.evaluate import evaluate, packed_label_scores, pairwise_label_scores
from gossipmed.learn.train import build_site_learners
from gossipmed.privacy.randomness import RandomSource


def _setup(base: Path, kind: str) -> object:
    cfg = LearningConfig(
        data=DataConfig(
            dataset="icd10", n_sites=1, partition="iid", max_train_examples=50, eval_size=8
        ),
        adapter=AdapterConfig(kind=kind, rank=2),  # type: ignore[arg-type]
        dp=DPConfig(enabled=False),
        base_model=str(base),
    )
    setup = build_site_learners(cfg, randomness=RandomSource.seeded(0))
    g = torch.Generator().manual_seed(3)  # off the init, so adapters change the scores
    state = setup.model.read_state()
    setup.model.load_state(
        {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in state.items()}
    )
    return setup


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_packed_scores_equal_per_pair_scores(tiny_base: Path, kind: str) -> None:
    setup = _setup(tiny_base, kind)
    es = setup.eval_set  # type: ignore[attr-defined]
    model = setup.model  # type: ignore[attr-defined]
    assert es.candidates is not None
    packed = packed_label_scores(model, es.prompts, es.label_tokens, batch=3)
    pairs = pairwise_label_scores(model, es.candidates, len(es.labels))
    assert packed.shape == (8, 21)
    torch.testing.assert_close(packed, pairs, rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.argmax(dim=1), pairs.argmax(dim=1))


def test_evaluate_packed_matches_the_reference_report(tiny_base: Path) -> None:
    setup = _setup(tiny_base, "lora")
    es, model = setup.eval_set, setup.model  # type: ignore[attr-defined]
    fast = evaluate(model, es)
    slow = evaluate(model, replace(es, prompts=(), label_tokens=(), label_only_loss=False))
    assert fast.accuracy == slow.accuracy
    assert fast.loss == pytest.approx(slow.loss, rel=1e-5)


def test_packing_is_verified_once_and_then_used(tiny_base: Path) -> None:
    setup = _setup(tiny_base, "lora")
    model = setup.model  # type: ignore[attr-defined]
    assert model.packing_ok is None
    evaluate(model, setup.eval_set)  # type: ignore[attr-defined]
    assert model.packing_ok is True


def test_logits_post_processed_by_the_lm_keep_the_full_forward(tiny_base: Path) -> None:
    """The label-position shortcut head(decoder(x)) is only taken where it is exact."""
    from types import SimpleNamespace

    from torch import nn

    from gossipmed.learn.model import load_base_model
    from gossipmed.learn.targets import TargetLogits

    llama, _ = load_base_model(tiny_base)

    class SoftCapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = llama

        def get_decoder(self) -> nn.Module:
            return self.lm.get_decoder()  # type: ignore[operator]

        def get_output_embeddings(self) -> nn.Module:
            return self.lm.get_output_embeddings()  # type: ignore[operator]

        def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=30 * torch.tanh(self.lm(input_ids=input_ids).logits / 30))

    assert TargetLogits(llama).__dict__["_parts"] is not None
    capped = TargetLogits(SoftCapped())
    assert capped.__dict__["_parts"] is None
    ids, query = torch.tensor([[1, 5, 9, 4]]), torch.tensor([[1, 3]])
    expected = 30 * torch.tanh(llama(input_ids=ids).logits[:, [1, 3]] / 30)
    torch.testing.assert_close(capped(ids, query), expected)
