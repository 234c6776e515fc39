"""One shared model object: frozen base + adapter, with its trainable state swappable.

Many simulated sites share one `AdapterModel`; a site's whole model state is the flat dict
of trainable tensors it loads before training and reads back after. Per-sample gradients
use `torch.func` (functional_call + vmap(grad)), which works for every adapter kind,
including prompt tuning and embeddings, unlike hook-based per-sample gradients.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gossipmed.errors import ModelError
from gossipmed.learn.adapters import save_adapter, trainable_names, wrap_with_adapter
from gossipmed.learn.config import AdapterConfig
from gossipmed.learn.optim import SiteOptimizer

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


@dataclass(frozen=True)
class Targets:
    """A batch reduced to what the loss needs: trimmed inputs and its target positions.

    Right padding is cut down to the batch's last target (pads come after every real token,
    so under causal attention they never changed anything). `query[b, k]` is the position
    whose logits predict `token[b, k]`; `weight` is the loss mask there (0 for fillers)."""

    ids: torch.Tensor  # [B, W]
    query: torch.Tensor  # [B, K]
    token: torch.Tensor  # [B, K]
    weight: torch.Tensor  # [B, K]


def loss_targets(ids: torch.Tensor, mask: torch.Tensor) -> Targets:
    on = mask[:, 1:] > 0
    width = int(on.any(dim=0).nonzero().max()) + 2 if bool(on.any()) else 2
    on = on[:, : width - 1]
    k = max(1, int(on.sum(dim=1).max()))
    # stable sort puts each row's target positions first, in order
    query = torch.sort(on.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :k]
    token = ids[:, 1:width].gather(1, query)
    weight = mask[:, 1:width].gather(1, query)
    return Targets(ids=ids[:, :width], query=query, token=token, weight=weight)


def _weighted_nll(
    logits: torch.Tensor, t_token: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """logits [B, K, V] at the target positions -> per-example mean NLL."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, t_token[..., None]).squeeze(-1)
    return (nll * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)


class _TargetLogits(nn.Module):
    """Logits only at the target positions: the vocabulary projection (the costliest layer
    of a small LM) and its softmax then run on a few label tokens instead of every position.
    Wrapping the adapter model keeps its parameter names (prefixed `inner.`) for
    `torch.func.functional_call`."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        get_base = getattr(inner, "get_base_model", None)
        base = get_base() if callable(get_base) else inner
        get_decoder = getattr(base, "get_decoder", None)
        get_head = getattr(base, "get_output_embeddings", None)
        parts = None
        # prompt learning prepends virtual tokens inside the peft wrapper: keep its forward
        prompt = bool(getattr(getattr(inner, "active_peft_config", None), "is_prompt_learning", 0))
        if callable(get_decoder) and callable(get_head) and not prompt:
            parts = (get_decoder(), get_head())
        # not registered as submodules: their parameters stay reachable only as `inner.*`
        object.__setattr__(self, "_parts", parts)
        if parts is not None and not self._split_matches_full():
            object.__setattr__(self, "_parts", None)

    @torch.no_grad()
    def _split_matches_full(self) -> bool:
        """head(decoder(x)) must be the model's own logits: some architectures post-process
        logits (e.g. soft-capping) in their LM forward; those keep the full forward."""
        try:
            ids = torch.tensor([[3, 9, 4, 7, 5, 8]])  # any vocabulary has these ids
            query = torch.arange(6)[None]
            full: torch.Tensor = self.inner(input_ids=ids).logits[:, -6:]
            return bool(torch.allclose(self.forward(ids, query), full, rtol=1e-4, atol=1e-4))
        except (AttributeError, TypeError, ValueError, RuntimeError, IndexError):
            return False

    def forward(self, ids: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        index = query[..., None]
        parts = self.__dict__["_parts"]
        if parts is not None:
            decoder, head = parts
            hidden = decoder(input_ids=ids).last_hidden_state
            picked = hidden.gather(1, index.expand(-1, -1, hidden.shape[-1]))
            logits: torch.Tensor = head(picked)
            return logits
        full: torch.Tensor = self.inner(input_ids=ids).logits[:, -ids.shape[1] :]
        return full.gather(1, index.expand(-1, -1, full.shape[-1]))


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
        self._target_logits = _TargetLogits(self.module)
        self.packing_ok: bool | None = (
            None  # packed label scoring verified (gossipmed.learn.evaluate)
        )

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
    def example_losses(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-example masked mean NLL with autograd (for non-private steps and eval)."""
        t = loss_targets(ids, mask)
        return _weighted_nll(self._target_logits(t.ids, t.query), t.token, t.weight)

    def per_sample_grads(
        self, ids: torch.Tensor, mask: torch.Tensor, *, microbatch: int = 64
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(name -> [B, *shape] gradients of each example's own loss, per-example losses)."""
        from torch.func import functional_call, grad_and_value, vmap

        params = {n: p.detach() for n, p in self._params.items()}
        wrapped = self._target_logits

        def loss_one(
            p: dict[str, torch.Tensor],
            x: torch.Tensor,
            q: torch.Tensor,
            tok: torch.Tensor,
            w: torch.Tensor,
        ) -> torch.Tensor:
            inner = {f"inner.{n}": v for n, v in p.items()}
            logits = functional_call(wrapped, inner, (x[None], q[None]), strict=False)
            return _weighted_nll(logits, tok[None], w[None])[0]

        fn = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0, 0, 0))
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        losses = []
        for start in range(0, ids.shape[0], microbatch):
            t = loss_targets(ids[start : start + microbatch], mask[start : start + microbatch])
            g, loss = fn(params, t.ids, t.query, t.token, t.weight)
            for n in params:
                grads[n].append(g[n])
            losses.append(loss)
        if not losses:
            empty = {n: torch.zeros((0, *p.shape)) for n, p in params.items()}
            return empty, torch.zeros(0)
        return {n: torch.cat(v) for n, v in grads.items()}, torch.cat(losses)

    def apply_update(
        self,
        grads: Mapping[str, torch.Tensor],
        *,
        lr: float | None = None,
        optimizer: SiteOptimizer | None = None,
    ) -> None:
        """One step on the loaded state: the site's optimiser, or plain SGD at `lr`."""
        if optimizer is None:
            if lr is None:
                raise ValueError("apply_update needs lr or an optimizer")
            optimizer = SiteOptimizer(kind="sgd", lr=lr)
        optimizer.step(self._params, grads)

    def mean_grad(
        self, ids: torch.Tensor, mask: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Gradient of the batch's mean per-example loss (the non-private step)."""
        params = list(self._params.values())
        loss = self.example_losses(ids, mask).mean()
        grads = torch.autograd.grad(loss, params)
        return dict(zip(self.names, grads, strict=True)), float(loss.detach())
