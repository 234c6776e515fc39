"""Wrap a base causal LM with the trainable part that travels: LoRA, FFA-LoRA, prompt, full.

Initialisation is seeded from `AdapterConfig.shared_seed`, so every site of a consortium
starts from the same adapter (a precondition for averaging). FFA-LoRA (Sun et al. 2024)
freezes A at that shared random init and trains only B: averaging B across sites is then
exactly averaging the update B@A, and DP noise enters only half the parameters.

LoRA targets follow the architecture unless configured: peft's per-model default where it
has one, else the attention's query/value projections (or its fused qkv projection). The
adapter is created in float32 whatever the base's dtype, so a site with a bfloat16 base on a
GPU starts from exactly the adapter a float32 CPU site starts from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from gossipmed.errors import ModelError
from gossipmed.learn.config import AdapterConfig
from gossipmed.learn.hf_quiet import peft_wrapping

# Auto targets when peft has no default for the model type, tried in this order.
QUERY_VALUE_PAIRS = (("q_proj", "v_proj"), ("query", "value"), ("q", "v"))
FUSED_QKV = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "W_pack", "qkv")


def _is_projection(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2 family) is a linear layer with transposed weights
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _projections(base: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in base.named_modules() if n and _is_projection(m)}


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith(f".{target}")  # peft's rule for a list of names


def resolve_target_modules(base: nn.Module, requested: Sequence[str] | None) -> tuple[str, ...]:
    """The LoRA target names for this base: `requested` checked, or chosen per architecture."""
    projections = _projections(base)
    leaves = {n.rsplit(".", 1)[-1] for n in projections}
    if requested is not None:
        missing = [t for t in requested if not any(_matches(n, t) for n in projections)]
        if missing:
            raise ModelError(
                f"target modules {missing} not found in this model; its linear layers are "
                f"{sorted(leaves)}"
            )
        return tuple(requested)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(base, "config", None), "model_type", None)
    default = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(str(model_type))
    if default and all(t in leaves for t in default):
        return tuple(default)
    for pair in QUERY_VALUE_PAIRS:
        if all(t in leaves for t in pair):
            return pair
    for fused in FUSED_QKV:
        if fused in leaves:
            return (fused,)
    raise ModelError(
        f"cannot choose LoRA targets for model type {model_type!r}: no query/value or fused "
        f"qkv projection among its linear layers {sorted(leaves)}; set adapter.target_modules "
        "(--target-modules)"
    )


def wrap_with_adapter(base: nn.Module, config: AdapterConfig) -> nn.Module:
    """Return the model whose `requires_grad` parameters are exactly the adapter state.

    The adapter is created on the CPU before the model moves to its device, under the
    consortium's seed, so every site's initial adapter is identical."""
    from peft import LoraConfig, PeftConfig, PromptTuningConfig, PromptTuningInit, get_peft_model

    if config.kind == "full":
        for p in base.parameters():
            p.requires_grad_(True)
        return base
    for p in base.parameters():
        p.requires_grad_(False)
    upcast: list[tuple[nn.Module, torch.dtype]] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.shared_seed)
        if config.kind in ("lora", "ffa_lora"):
            targets = resolve_target_modules(base, config.target_modules)
            layers = [
                m for n, m in _projections(base).items() if any(_matches(n, t) for t in targets)
            ]
            # peft creates the adapter in float32, then casts it to the base layer's dtype:
            # lift the targeted layers to float32 while it does, so the init is not rounded
            for layer in layers:
                dtype = next(layer.parameters()).dtype
                if dtype != torch.float32:
                    upcast.append((layer, dtype))
                    layer.float()
            peft_config: PeftConfig = LoraConfig(
                r=config.rank,
                lora_alpha=config.lora_alpha,
                target_modules=list(targets),
                lora_dropout=0.0,  # dropout would make per-sample grads stochastic
                bias="none",
                task_type="CAUSAL_LM",
                fan_in_fan_out=any(type(m).__name__ == "Conv1D" for m in layers),
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
            with peft_wrapping():
                model = get_peft_model(base, peft_config)
        except ValueError as exc:
            raise ModelError(f"cannot attach {config.kind} adapter: {exc}") from exc
    for layer, dtype in upcast:
        layer.to(dtype)  # the base layer only: peft keeps the adapter beside it, not inside
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # the adapter and its DP arithmetic stay float32
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
