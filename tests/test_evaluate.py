"""Packed label scoring (one row per example) equals the one-row-per-pair reference."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gossipmed.config import AdapterConfig, DataConfig, DPConfig, LearningConfig
from gossipmed.evaluate import evaluate, packed_label_scores, pairwise_label_scores
from gossipmed.train import build_site_learners


def _setup(base: Path, kind: str) -> object:
    cfg = LearningConfig(
        data=DataConfig(
            dataset="icd10", n_sites=1, partition="iid", max_train_examples=50, eval_size=8
        ),
        adapter=AdapterConfig(kind=kind, rank=2),  # type: ignore[arg-type]
        dp=DPConfig(enabled=False),
        base_model=str(base),
    )
    setup = build_site_learners(cfg)
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
