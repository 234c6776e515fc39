"""One shared model object: frozen base + adapter, with its trainable state swappable.

Many simulated sites share one `AdapterModel`; a site's whole model state is the flat dict
of trainable tensors it loads before training and reads back after. Per-sample gradients
use `torch.func` (functional_call + vmap(grad)), which works for every adapter kind,
including prompt tuning and embeddings, unlike hook-based per-sample gradients.

The base may live on a GPU in bfloat16; the adapter stays float32, and the state that goes
in and out (`load_state`/`read_state`) is float32 on the CPU, the form that goes on the wire.
A logical batch is processed in micro-batches whose gradients (clipped per example under DP)
are summed as they come, so memory follows the micro-batch, never the Poisson batch.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gossipmed.errors import ConfigError, ModelError
from gossipmed.learn.adapters import save_adapter, trainable_names, wrap_with_adapter
from gossipmed.learn.compute import auto_microbatch, resolve_device, torch_dtype
from gossipmed.learn.config import AdapterConfig, ComputeConfig
from gossipmed.learn.hf_quiet import quiet_transformers
from gossipmed.learn.optim import SiteOptimizer
from gossipmed.learn.targets import TargetLogits, loss_targets, weighted_nll
from gossipmed.learn.weights_check import checked_config
from gossipmed.privacy.dp import clip_sum

AdapterState = dict[str, torch.Tensor]


def load_base_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, object]:
    """Any local Hugging Face causal-LM folder (never the hub) -> (model, tokenizer).

    Only safetensors weights load, and only after their headers match the parameters
    config.json describes (gossipmed.learn.weights_check): a missing or misshapen weight is a
    one-line ModelError, never a random one. A pickled checkpoint is refused likewise."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()

    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model folder (it has no config.json)")
    config = checked_config(path)  # weights match it; nothing is allocated before
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            local_files_only=True,
            use_safetensors=True,
            attn_implementation="eager",
            dtype=dtype,
        )
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"refusing the pickled weights in {path}: they need code to load ({first[:160]}); "
            "convert them to model.safetensors"
        ) from exc
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load base model from {path}: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _no_padding_warning(*_args: object, **_kwargs: object) -> None:
    return None


def _silence_padding_check(module: nn.Module) -> None:
    """No attention mask is ever passed (right padding under causal attention cannot change
    the real positions), so transformers' "padded input without a mask" warning is moot here,
    and its data-dependent test breaks vmap (GPT-2 runs it on every forward)."""
    for m in module.modules():
        if callable(getattr(m, "warn_if_padding_and_no_attention_mask", None)):
            object.__setattr__(m, "warn_if_padding_and_no_attention_mask", _no_padding_warning)


def expected_schema(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype string, shape): what a peer's update must match exactly."""
    return {k: (str(v.dtype).removeprefix("torch."), tuple(v.shape)) for k, v in state.items()}


@dataclass(frozen=True)
class ClippedSum:
    """One logical batch under DP, before noise: the sum of per-example clipped gradients."""

    grads: dict[str, torch.Tensor]  # float32, on the model's device
    losses: torch.Tensor  # [B] per-example losses (CPU)
    norms: torch.Tensor  # [B] per-example gradient norms before clipping (CPU, float64)


def length_order(mask: torch.Tensor) -> torch.Tensor:
    """Rows sorted by how far their targets reach (stable): micro-batches cut from this order
    hold rows of similar length, so each trims its right padding to its own longest row.

    For DP this changes nothing: which examples take part was decided by the Poisson draw
    before, and without looking at, the order; each example's clipped gradient depends on its
    own row alone (right padding, causal attention, no mask: tested); and the noisy sum
    over the batch is the same sum in any order (up to float rounding)."""
    on = mask[:, 1:] > 0
    positions = torch.arange(1, on.shape[1] + 1).expand_as(on)
    reach = torch.where(on, positions, 0).amax(dim=1) if on.shape[1] else on.sum(dim=1)
    return torch.sort(reach, stable=True).indices


def _unsort(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(values)
    out[order] = values
    return out


def _chunks(n: int, size: int) -> range:
    if size < 1:
        raise ValueError("microbatch must be >= 1")
    return range(0, n, size)


class AdapterModel:
    """The frozen base + adapter shared by all sites in a process (on one device)."""

    def __init__(
        self,
        base: nn.Module,
        tokenizer: object,
        adapter: AdapterConfig,
        *,
        device: torch.device | str = "cpu",
    ) -> None:
        self.adapter_config = adapter
        self.tokenizer = tokenizer
        self.base_config: Any = getattr(base, "config", None)
        self.base_dtype = next(
            (p.dtype for p in base.parameters() if p.is_floating_point()), torch.float32
        )
        self.device = torch.device(device)
        _silence_padding_check(base)
        # the adapter is made on the CPU (same init everywhere), then everything moves
        self.module = wrap_with_adapter(base, adapter).to(self.device)
        self.module.eval()
        peft_config = getattr(self.module, "peft_config", {}).get("default")
        targets = getattr(peft_config, "target_modules", None)
        self.target_modules: tuple[str, ...] | None = (
            tuple(sorted(targets)) if isinstance(targets, set | list | tuple) else None
        )
        self.names = trainable_names(self.module)
        params = dict(self.module.named_parameters())
        self._params = {n: params[n] for n in self.names}
        self.initial_state = self.read_state()
        self._target_logits = TargetLogits(self.module)
        self.packing_ok: bool | None = (
            None  # packed label scoring verified (gossipmed.learn.evaluate)
        )

    @classmethod
    def from_pretrained(
        cls, path: str | Path, adapter: AdapterConfig, *, compute: ComputeConfig | None = None
    ) -> AdapterModel:
        compute = compute or ComputeConfig()
        device = resolve_device(compute.device)  # fail before loading gigabytes
        base, tokenizer = load_base_model(path, dtype=torch_dtype(compute.base_dtype))
        return cls(base, tokenizer, adapter, device=device)

    def auto_microbatch(self, *, seq_len: int, response_tokens: int = 0) -> int:
        """Examples per pass that keep this base's activations, and the logits at
        `response_tokens` target positions, within the memory budget."""
        if self._target_logits.__dict__["_parts"] is None:
            response_tokens = seq_len + self.virtual_tokens  # logits at every position
        return auto_microbatch(
            self.base_config,
            seq_len=seq_len,
            dtype=self.base_dtype,
            device=self.device,
            response_tokens=response_tokens,
        )

    @property
    def virtual_tokens(self) -> int:
        """Positions prompt tuning prepends to every sequence (0 for other adapters)."""
        kind = self.adapter_config.kind
        return self.adapter_config.num_virtual_tokens if kind == "prompt" else 0

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the base's position embeddings cover (None: not stated)."""
        for name in ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx"):
            value = getattr(self.base_config, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return None

    def check_max_length(self, max_length: int) -> None:
        """ConfigError when `max_length` tokens (plus prompt tuning's virtual tokens) pass
        the base's position embeddings: those positions were never trained, or do not
        exist at all (a learned position table), so the run would fail or learn garbage."""
        limit = self.max_positions
        need = max_length + self.virtual_tokens
        if limit is not None and need > limit:
            extra = f" + {self.virtual_tokens} virtual tokens" if self.virtual_tokens else ""
            raise ConfigError(
                f"data.max_length {max_length}{extra} exceeds this base's "
                f"max_position_embeddings {limit}; use data.max_length <= "
                f"{limit - self.virtual_tokens}"
            )

    # --- state swapping -------------------------------------------------------------------
    def read_state(self) -> AdapterState:
        """float32 CPU copies: the state that is checkpointed, averaged and sent."""
        return {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in self._params.items()}

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
        """Per-example masked mean NLL with autograd (on the model's device)."""
        t = loss_targets(ids, mask).to(self.device)
        return weighted_nll(self._target_logits(t.ids, t.query), t.token, t.weight)

    def _per_sample_fn(self) -> Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]]:
        from torch.func import functional_call, grad_and_value, vmap

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
            return weighted_nll(logits, tok[None], w[None])[0]

        fn: Callable[..., tuple[dict[str, torch.Tensor], torch.Tensor]]
        fn = vmap(grad_and_value(loss_one), in_dims=(None, 0, 0, 0, 0))
        return fn

    def per_sample_grads(
        self, ids: torch.Tensor, mask: torch.Tensor, *, microbatch: int = 64
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """(name -> [B, *shape] gradients of each example's own loss, per-example losses).

        Holds every example's gradient at once: for inspection and tests. Training uses
        `clipped_grad_sum`, which keeps only one micro-batch of them."""
        params = {n: p.detach() for n, p in self._params.items()}
        fn = self._per_sample_fn()
        grads: dict[str, list[torch.Tensor]] = {n: [] for n in params}
        losses = []
        for start in _chunks(ids.shape[0], microbatch):
            end = start + microbatch
            t = loss_targets(ids[start:end], mask[start:end]).to(self.device)
            g, loss = fn(params, t.ids, t.query, t.token, t.weight)
            for n in params:
                grads[n].append(g[n])
            losses.append(loss)
        if not losses:
            empty = {n: p.new_zeros((0, *p.shape)) for n, p in params.items()}
            return empty, torch.zeros(0)
        return {n: torch.cat(v) for n, v in grads.items()}, torch.cat(losses)

    def clipped_grad_sum(
        self, ids: torch.Tensor, mask: torch.Tensor, *, clip_norm: float, microbatch: int
    ) -> ClippedSum:
        """Sum over the batch of each example's gradient clipped to `clip_norm` (DP-SGD).

        Each micro-batch's per-example gradients are clipped and added to one running sum,
        then dropped: peak memory is one micro-batch's, whatever the batch size. Micro-batches
        are cut in length order (`length_order`); losses and norms come back in batch order."""
        order = length_order(mask)
        ids, mask = ids[order], mask[order]
        params = {n: p.detach() for n, p in self._params.items()}
        total = {
            n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()
        }
        fn = self._per_sample_fn()
        losses, norms = [], []
        for start in _chunks(ids.shape[0], microbatch):
            end = start + microbatch
            t = loss_targets(ids[start:end], mask[start:end]).to(self.device)
            per_sample, loss = fn(params, t.ids, t.query, t.token, t.weight)
            summed, chunk_norms = clip_sum(per_sample, clip_norm=clip_norm)
            del per_sample
            for n in total:
                total[n].add_(summed[n])
            losses.append(loss.detach().float().cpu())
            norms.append(chunk_norms.cpu())
        if not losses:
            return ClippedSum(total, torch.zeros(0), torch.zeros(0, dtype=torch.float64))
        return ClippedSum(
            grads=total,
            losses=_unsort(torch.cat(losses), order),
            norms=_unsort(torch.cat(norms), order),
        )

    def grad_sum(
        self, ids: torch.Tensor, mask: torch.Tensor, *, microbatch: int
    ) -> tuple[dict[str, torch.Tensor], float]:
        """(gradient of the batch's summed per-example loss, that summed loss), computed one
        micro-batch at a time (the non-private step), in length order."""
        order = length_order(mask)
        ids, mask = ids[order], mask[order]
        params = list(self._params.values())
        total = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in params]
        loss_sum = 0.0
        for start in _chunks(ids.shape[0], microbatch):
            end = start + microbatch
            loss = self.example_losses(ids[start:end], mask[start:end]).sum()
            for acc, g in zip(total, torch.autograd.grad(loss, params), strict=True):
                acc.add_(g)
            loss_sum += float(loss.detach())
        return dict(zip(self.names, total, strict=True)), loss_sum

    def mean_grad(
        self, ids: torch.Tensor, mask: torch.Tensor, *, microbatch: int | None = None
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Gradient of the batch's mean per-example loss (the non-private step)."""
        n = int(ids.shape[0])
        if n == 0:
            raise ValueError("mean_grad needs a non-empty batch")
        grads, loss_sum = self.grad_sum(ids, mask, microbatch=microbatch or n)
        return {k: g / n for k, g in grads.items()}, loss_sum / n

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
