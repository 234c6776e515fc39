"""Instruction tuning and multiple choice on the toy base: padded per-example DP gradients are
each example's own, multiple-choice scores are the same packed or pair by pair, free text is
scored by loss and perplexity, and a length the base cannot position is refused."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gossipmed.errors import ConfigError
from gossipmed.learn.compute import auto_microbatch
from gossipmed.learn.config import AdapterConfig, DataConfig, DPConfig, LearningConfig
from gossipmed.learn.data import Encoder, FitCounts
from gossipmed.learn.datasets import Example, TaskDataset
from gossipmed.learn.evaluate import (
    build_eval_set,
    evaluate,
    packed_option_scores,
    pairwise_option_scores,
)
from gossipmed.learn.model import AdapterModel, length_order
from gossipmed.learn.train import build_site_learners, report_fit
from gossipmed.privacy.dp import clip_sum
from gossipmed.privacy.randomness import RandomSource

QA = [
    Example(text="Diagnosis: fever", label=None, response="infectious disease of the lung"),
    Example(
        text="Which chapter holds a fracture of the left femur?", label=None, response="injury"
    ),
    Example(text="pain", label=None, response="a symptom"),
    Example(text="Diagnosis: essential hypertension of the heart", label=None, response="heart"),
    Example(text="cough", label=None, response="respiratory chapter, code J"),
]
MC = [
    Example(
        text="Diagnosis: fever",
        label="B",
        options=(("A", "injury"), ("B", "infectious"), ("C", "mental disorder of mood")),
    ),
    Example(text="fracture of the femur", label="A", options=(("A", "injury"), ("B", "eye"))),
    Example(
        text="Diagnosis: asthma",
        label="D",
        options=(("A", "skin"), ("B", "blood"), ("C", "ear"), ("D", "respiratory")),
    ),
]


def _model(base: Path, kind: str) -> AdapterModel:
    model = AdapterModel.from_pretrained(base, AdapterConfig(kind=kind, rank=4))  # type: ignore[arg-type]
    g = torch.Generator().manual_seed(1)  # off the init: LoRA B = 0 would hide A's gradient
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.read_state().items()}
    model.load_state(state)
    return model


def _encoder(model: AdapterModel, examples: list[Example]) -> Encoder:
    dataset = TaskDataset("qa", "", (), tuple(examples), tuple(examples), ())
    return Encoder(model.tokenizer, dataset=dataset, max_length=64)


@pytest.mark.parametrize("kind", ["lora", "ffa_lora", "prompt", "full"])
def test_padded_per_example_dp_gradients_equal_each_example_alone(
    tiny_base: Path, kind: str
) -> None:
    model = _model(tiny_base, kind)
    batch = _encoder(model, QA).encode(QA)
    lengths = [int((m > 0).nonzero().max()) + 1 for m in batch.loss_mask]
    assert len(set(lengths)) >= 3 and min(lengths) < batch.input_ids.shape[1] == max(lengths)
    alone = []  # each example unpadded, through plain autograd (no vmap)
    for i, n in enumerate(lengths):
        grad, _ = model.mean_grad(batch.input_ids[i : i + 1, :n], batch.loss_mask[i : i + 1, :n])
        alone.append(grad)
    norms = torch.tensor(
        [math.sqrt(sum(float(g.double().pow(2).sum()) for g in grad.values())) for grad in alone],
        dtype=torch.float64,
    )
    clip = float(norms.median())  # some examples clipped, some not
    per_sample, _ = model.per_sample_grads(batch.input_ids, batch.loss_mask, microbatch=len(QA))
    clipped_each, _ = clip_sum(per_sample, clip_norm=clip)  # the padded batch's clipped sum
    for i, grad in enumerate(alone):
        scale = min(1.0, clip / float(norms[i]))  # each example clipped by its own norm
        for name in model.names:
            torch.testing.assert_close(
                per_sample[name][i] * scale, grad[name] * scale, rtol=1e-4, atol=1e-6
            )
    # one padded pass; and length-ordered micro-batches (the same code for every adapter)
    for microbatch in (len(QA), 2) if kind == "lora" else (len(QA),):
        summed = model.clipped_grad_sum(
            batch.input_ids, batch.loss_mask, clip_norm=clip, microbatch=microbatch
        )
        torch.testing.assert_close(summed.norms, norms, rtol=1e-4, atol=1e-7)
        for name in model.names:
            expected = sum(
                g[name] * min(1.0, clip / float(n)) for g, n in zip(alone, norms, strict=True)
            )
            torch.testing.assert_close(summed.grads[name], expected, rtol=1e-4, atol=1e-6)
            torch.testing.assert_close(clipped_each[name], expected, rtol=1e-4, atol=1e-6)


def test_micro_batches_are_cut_in_length_order_and_results_return_in_batch_order() -> None:
    mask = torch.zeros(5, 9)
    for i, reach in enumerate([8, 2, 6, 2, 4]):
        mask[i, 1:reach] = 1.0
    assert length_order(mask).tolist() == [1, 3, 4, 2, 0]  # stable among equals


def test_multiple_choice_scores_packed_equal_the_pair_grid(tiny_base: Path) -> None:
    model = _model(tiny_base, "lora")
    encoder = _encoder(model, MC)
    es = build_eval_set(encoder, encoder.dataset, loss_on="label")
    assert es.kind == "options" and es.answers == (1, 0, 3)
    packed = packed_option_scores(model, es.prompts, es.options, batch=2)
    assert es.candidates is not None
    pairs = pairwise_option_scores(model, es.candidates, [len(o) for o in es.options])
    assert packed.shape == pairs.shape == (3, 4)
    assert torch.isinf(packed[1, 2:]).all() and torch.isinf(pairs[1, 2:]).all()
    finite = torch.isfinite(pairs)
    torch.testing.assert_close(packed[finite], pairs[finite], rtol=1e-4, atol=1e-4)
    assert torch.equal(packed.argmax(dim=1), pairs.argmax(dim=1))

    fast = evaluate(model, es)
    assert model.packing_ok is True
    slow = evaluate(model, replace(es, prompts=(), label_only_loss=False))
    assert fast.accuracy == slow.accuracy and fast.accuracy_norm == slow.accuracy_norm
    assert fast.loss == pytest.approx(slow.loss, rel=1e-4)
    assert fast.perplexity == pytest.approx(slow.perplexity, rel=1e-4)
    lengths = [[len(o) for o in opts] for opts in es.options]
    truth = torch.tensor(es.answers)
    norm = torch.tensor(
        [max(range(len(n)), key=lambda j: float(pairs[i, j]) / n[j]) for i, n in enumerate(lengths)]
    )
    assert fast.accuracy == float((pairs.argmax(dim=1) == truth).float().mean())
    assert fast.accuracy_norm == float((norm == truth).float().mean())


def test_free_text_is_scored_by_loss_and_token_weighted_perplexity(tiny_base: Path) -> None:
    model = _model(tiny_base, "lora")
    encoder = _encoder(model, QA)
    es = build_eval_set(encoder, encoder.dataset, loss_on="label")
    assert es.kind == "none" and es.candidates is None
    report = evaluate(model, es)
    assert report.accuracy is None and report.accuracy_norm is None
    losses = model.example_losses(es.targets.input_ids, es.targets.loss_mask).detach().double()
    tokens = es.targets.loss_mask[:, 1:].sum(dim=1).double()
    assert report.loss == pytest.approx(float(losses.mean()), rel=1e-5)
    assert report.perplexity == pytest.approx(
        math.exp(float((losses * tokens).sum() / tokens.sum())), rel=1e-5
    )


def _config(base: Path, path: Path, **data: object) -> LearningConfig:
    return LearningConfig(
        data=DataConfig(dataset="user", path=str(path), n_sites=2, partition="iid", **data),  # type: ignore[arg-type]
        adapter=AdapterConfig(kind="lora", rank=2),
        dp=DPConfig(epsilon=8.0, planned_steps=4),
        base_model=str(base),
    )


def test_a_qa_site_trains_under_dp_and_reports_every_metric(
    tiny_base: Path, tmp_path: Path
) -> None:
    rows = [
        {"question": f"Diagnosis: fever {i}", "options": {"A": "infectious", "B": "injury"},
         "answer": "AB"[i % 2]}
        for i in range(40)
    ]  # fmt: skip
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    setup = build_site_learners(
        _config(tiny_base, tmp_path / "mc.jsonl"), randomness=RandomSource.seeded(0)
    )
    site = setup.learners[0]
    stats = site.train_round(steps=1)
    assert math.isfinite(stats.train_loss)
    ev = site.evaluate()
    assert ev.accuracy is not None and ev.accuracy_norm is not None
    assert ev.perplexity is not None and ev.perplexity > 1.0


def test_a_length_past_the_bases_positions_is_refused(tiny_base: Path, tmp_path: Path) -> None:
    (tmp_path / "qa.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}))
    config = _config(tiny_base, tmp_path / "qa.jsonl", max_length=4096)
    with pytest.raises(
        ConfigError, match=r"data\.max_length 4096 exceeds this base.s max_position"
    ):
        build_site_learners(config, randomness=RandomSource.seeded(0))


def test_the_automatic_micro_batch_counts_the_response_logits() -> None:
    from transformers import LlamaConfig

    shape = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                        num_attention_heads=9, vocab_size=49152)  # fmt: skip
    cpu = torch.device("cpu")
    label = auto_microbatch(shape, seq_len=64, dtype=torch.float32, device=cpu, response_tokens=4)
    answer = auto_microbatch(
        shape, seq_len=64, dtype=torch.float32, device=cpu, response_tokens=200
    )
    assert label == auto_microbatch(shape, seq_len=64, dtype=torch.float32, device=cpu)
    assert answer < label


def test_fit_counts_are_said_once(caplog: pytest.LogCaptureFixture) -> None:
    dataset = TaskDataset("counted", "", (), QA[:1], QA[:1], ())
    with caplog.at_level(logging.WARNING, logger="gossipmed.learn.train"):
        for _ in range(3):
            report_fit(dataset, max_length=32, counts=FitCounts(truncated=3, dropped=1))
        report_fit(dataset, max_length=32, counts=FitCounts())
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "counted: data.max_length 32 cut the prompt of 3 examples and dropped 1 whose response "
        "alone does not fit (these counts stay on this site)"
    ]
