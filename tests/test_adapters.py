"""Adapters: per-sample gradients are exact, state swaps are exact, PEFT files round-trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gossipmed.learn.config import AdapterConfig
from gossipmed.learn.model import AdapterModel, expected_schema

KINDS = ["lora", "ffa_lora", "prompt", "full"]


def _model(base: Path, kind: str) -> AdapterModel:
    return AdapterModel.from_pretrained(base, AdapterConfig(kind=kind, rank=4))  # type: ignore[arg-type]


def _batch(model: AdapterModel) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    vocab = model.module.get_input_embeddings().num_embeddings  # type: ignore[operator]
    ids = torch.randint(3, vocab, (5, 12), generator=g)
    mask = torch.zeros(5, 12)
    mask[:, 6:] = 1.0
    mask[2, 9:] = 0.0  # ragged targets
    return ids, mask


def _perturb(model: AdapterModel) -> None:
    """Move off the init (LoRA B = 0 would make A's gradient vanish and the test trivial)."""
    g = torch.Generator().manual_seed(1)
    state = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in model.read_state().items()}
    model.load_state(state)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_per_sample_grads_equal_a_per_example_loop(tiny_base: Path, kind: str) -> None:
    model = _model(tiny_base, kind)
    _perturb(model)
    ids, mask = _batch(model)
    grads, losses = model.per_sample_grads(ids, mask, microbatch=2)
    for i in range(ids.shape[0]):
        loop, loss = model.mean_grad(ids[i : i + 1], mask[i : i + 1])
        assert losses[i].item() == pytest.approx(loss, rel=1e-4)
        for name in model.names:
            torch.testing.assert_close(grads[name][i], loop[name], rtol=1e-4, atol=1e-6)
    assert any(grads[n].abs().sum() > 0 for n in model.names)


def test_ffa_lora_trains_only_b_and_a_is_shared(tiny_base: Path) -> None:
    a, b = _model(tiny_base, "ffa_lora"), _model(tiny_base, "ffa_lora")
    assert all(".lora_B." in n for n in a.names)
    frozen_a = {n: p for n, p in a.module.named_parameters() if ".lora_A." in n}
    assert frozen_a
    other = dict(b.module.named_parameters())
    for n, p in frozen_a.items():
        assert torch.equal(p, other[n])


def test_schema_is_identical_across_instances(tiny_base: Path) -> None:
    a, b = _model(tiny_base, "lora"), _model(tiny_base, "lora")
    assert a.schema() == b.schema() == expected_schema(a.read_state())
    assert all(dtype == "float32" for dtype, _ in a.schema().values())
    for x, y in zip(a.read_state().values(), b.read_state().values(), strict=True):
        assert torch.equal(x, y)  # same shared-seed init on every site


@pytest.mark.parametrize("kind", ["lora", "ffa_lora", "prompt"])
def test_saved_adapter_loads_with_peft_and_gives_identical_logits(
    tiny_base: Path, tmp_path: Path, kind: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = _model(tiny_base, kind)
    _perturb(model)
    ids, _ = _batch(model)
    with torch.no_grad():
        ours = model.module(input_ids=ids).logits
    model.save(tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_base, local_files_only=True)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        theirs = loaded(input_ids=ids).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
