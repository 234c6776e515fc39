"""One shared model object: frozen base + adapter, with its trainable state swappable.

Many simulated sites share one `AdapterModel`; a site's whole model state is the flat dict
of trainable tensors it loads before training and reads back after. Per-sample gradients
use `torch.func` (functional_call + vmap(grad)), which works for every adapter kind,
including prompt tuning and embeddings, unlike hook-based per-sample gradients.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from gossipmed.adapters import save_adapter, trainable_names, wrap_with_adapter
from gossipmed.config import AdapterConfig
from gossipmed.errors import ModelError

AdapterState = dict[str, torch.Tensor]


def load_base_model(path: str | Path) -> tuple[nn.Module, object]:
    """Any local Hugging Face causal-LM folder (never the hub) -> (model, tokenizer)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model folder (no config.json)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, attn_implementation="eager", dtype=torch.float32
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load base model from {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def expected_schema(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype string, shape): what a peer's update must match exactly."""
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()}


def _masked_mean_nll(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-example mean NLL over masked target positions; logits/ids/mask are [B, L, ...]."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:]
    return (nll * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class AdapterModel:
    """The frozen base + adapter shared by all sites in a process."""

    def __init__(self, base: nn.Module, tokenizer: object, adapter: AdapterConfig) -> None:
        self.adapter_config = adapter
        self.tokenizer = tokenizer
        self.module = wrap_with_adapter(base, adapter)
        self.module.eval()
        self.names = trainable_names(self.module)
        params = dict(self.module.named_parameters())
        self._params = {n: params[n] for n in self.names}
        self.initial_state = self.read_state()

    @classmethod
    def from_pretrained(cls, path: str | Path, adapter: AdapterConfig) -> AdapterModel:
        base, tokenizer = load_base_model(path)
        return cls(base, tokenizer, adapter)

    # --- state swapping -------------------------------------------------------------------
    def read_state(self) -> AdapterState:
        return {n: p.detach().clone() for n, p in self._params.items()}

    def load_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if set(state) != set(self.names):
            missing = sorted(set(self.names) - set(state))[:3]
            extra = sorted(set(state) - set(self.names))[:3]
            raise ModelError(f"adapter state mismatch: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for n, p in self._params.items():
                t = state[n]
                if t.shape != p.shape or t.dtype != p.dtype:
                    raise ModelError(
                        f"adapter tensor {n}: {t.dtype}{tuple(t.shape)} != "
                        f"{p.dtype}{tuple(p.shape)}"
                    )
                p.copy_(t)

    def schema(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return expected_schema(self._params)

    def save(self, out: str | Path) -> Path:
        return save_adapter(self.module, out)

    # --- forward / gradients ---------------------------------------------------------------
    def _logits(self, out: object, length: int) -> torch.Tensor:
        logits: torch.Tensor = out.logits  # type: ignore[attr-defined]
        return logits[:, -length:]  # prompt tuning prepends virtual tokens

    def example_losses(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-example masked mean NLL with autograd (for non-private steps and eval)."""
        out = self.module(input_ids=ids)
        return _masked_mean_nll(self._logits(out, ids.shape[1]), ids, mask)

    def per_sample_grads(
        self, ids: torch.Tensor, mask: torch.Tensor, *, microbatch: int = 64
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(name -> [B, *shape] gradients of each example's own loss, per-example losses)."""
        from torch.func import functional_call, grad_and_value, vmap

        params = {n: p.detach() for n, p in self._params.items()}
        module = self.module

        def loss_one(p: dict[str, torch.Tensor], x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            out = functional_call(module, p, (), {"input_ids": x[None]}, strict=False)
            return _masked_mean_nll(self._logits(out, x.shape[0]), x[None], m[None])[0]

        fn = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0))
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        losses = []
        for start in range(0, ids.shape[0], microbatch):
            g, loss = fn(params, ids[start : start + microbatch], mask[start : start + microbatch])
            for n in params:
                grads[n].append(g[n])
            losses.append(loss)
        if not losses:
            empty = {n: torch.zeros((0, *p.shape)) for n, p in params.items()}
            return empty, torch.zeros(0)
        return {n: torch.cat(v) for n, v in grads.items()}, torch.cat(losses)

    def apply_update(self, grads: Mapping[str, torch.Tensor], *, lr: float) -> None:
        with torch.no_grad():
            for n, p in self._params.items():
                p.add_(grads[n], alpha=-lr)

    def mean_grad(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Gradient of the batch's mean per-example loss (the non-private step)."""
        params = list(self._params.values())
        loss = self.example_losses(ids, mask).mean()
        grads = torch.autograd.grad(loss, params)
        return dict(zip(self.names, grads, strict=True)), float(loss.detach())
