"""Wrap a base causal LM with the trainable part that travels: LoRA, FFA-LoRA, prompt, full.

Initialisation is seeded from `AdapterConfig.shared_seed`, so every site of a consortium
starts from the same adapter (a precondition for averaging). FFA-LoRA (Sun et al. 2024)
freezes A at that shared random init and trains only B: averaging B across sites is then
exactly averaging the update B@A, and DP noise enters only half the parameters.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from gossipmed.errors import ModelError
from gossipmed.learn.config import AdapterConfig


def wrap_with_adapter(base: nn.Module, config: AdapterConfig) -> nn.Module:
    """Return the model whose `requires_grad` parameters are exactly the adapter state."""
    from peft import LoraConfig, PeftConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    if config.kind == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    for p in base.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.shared_seed)
        if config.kind in ("lora", "ffa_lora"):
            peft_config: PeftConfig = LoraConfig(
                r=config.rank,
                lora_alpha=config.lora_alpha,
                target_modules=list(config.target_modules),
                lora_dropout=0.0,  # dropout would make per-sample grads stochastic
                bias="none",
                task_type="CAUSAL_LM",
            )
        elif config.kind == "prompt":
            peft_config = PromptTuningConfig(
                task_type="CAUSAL_LM",
                num_virtual_tokens=config.num_virtual_tokens,
                prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB,
            )
        else:
            raise ModelError(f"unknown adapter kind {config.kind!r}")
        try:
            model = get_peft_model(base, peft_config)
        except ValueError as exc:
            raise ModelError(f"cannot attach {config.kind} adapter: {exc}") from exc
    if config.kind == "ffa_lora":
        _freeze_a_from_shared_seed(model, seed=config.shared_seed)
    return model


def _freeze_a_from_shared_seed(model: nn.Module, *, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if ".lora_A." in name:
            bound = 1.0 / math.sqrt(p.shape[1])  # kaiming-uniform(a=sqrt(5)) bound, as peft
            with torch.no_grad():
                p.copy_(torch.rand(p.shape, generator=gen) * 2 * bound - bound)
            p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelError("FFA-LoRA left no trainable parameters")


def trainable_names(model: nn.Module) -> list[str]:
    """Stable, sorted parameter names; identical across sites, so they are the wire schema."""
    return sorted(n for n, p in model.named_parameters() if p.requires_grad)


def save_adapter(model: nn.Module, out: str | Path) -> Path:
    """PEFT format (adapter_config.json + adapter_model.safetensors); full mode saves the model."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # type: ignore[operator]
    return out
