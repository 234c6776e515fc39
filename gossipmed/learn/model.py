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

from gossipmed.errors import ModelError
from gossipmed.learn.adapters import save_adapter, trainable_names, wrap_with_adapter
from gossipmed.learn.compute import auto_microbatch, resolve_device, torch_dtype
from gossipmed.learn.config import AdapterConfig, ComputeConfig
from gossipmed.learn.hf_quiet import quiet_transformers
from gossipmed.learn.optim import SiteOptimizer
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
class Targets:
    """A batch reduced to what the loss needs: trimmed inputs and its target positions.

    Right padding is cut down to the batch's last target (pads come after every real token,
    so under causal attention they never changed anything). `query[b, k]` is the position
    whose logits predict `token[b, k]`; `weight` is the loss mask there (0 for fillers)."""

    ids: torch.Tensor  # [B, W]
    query: torch.Tensor  # [B, K]
    token: torch.Tensor  # [B, K]
    weight: torch.Tensor  # [B, K]

    def to(self, device: torch.device) -> Targets:
        return Targets(
            ids=self.ids.to(device),
            query=self.query.to(device),
            token=self.token.to(device),
            weight=self.weight.to(device),
        )


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
            param = next(self.inner.parameters())
            ids = torch.tensor([[3, 9, 4, 7, 5, 8]], device=param.device)  # in any vocabulary
            query = torch.arange(6, device=param.device)[None]
            full = self.inner(input_ids=ids).logits[:, -6:].float()
            split = self.forward(ids, query).float()
            tol = 1e-4 if param.dtype == torch.float32 else 2e-2
            return bool(torch.allclose(split, full, rtol=tol, atol=tol))
        except (AttributeError, TypeError, ValueError, RuntimeError, IndexError, StopIteration):
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


@dataclass(frozen=True)
class ClippedSum:
    """One logical batch under DP, before noise: the sum of per-example clipped gradients."""

    grads: dict[str, torch.Tensor]  # float32, on the model's device
    losses: torch.Tensor  # [B] per-example losses (CPU)
    norms: torch.Tensor  # [B] per-example gradient norms before clipping (CPU, float64)


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
        self._target_logits = _TargetLogits(self.module)
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

    def auto_microbatch(self, *, seq_len: int) -> int:
        """Examples per pass that keep this base's activations within the memory budget."""
        return auto_microbatch(
            self.base_config, seq_len=seq_len, dtype=self.base_dtype, device=self.device
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
        return _weighted_nll(self._target_logits(t.ids, t.query), t.token, t.weight)

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
            return _weighted_nll(logits, tok[None], w[None])[0]

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
        then dropped: peak memory is one micro-batch's, whatever the batch size."""
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
        return ClippedSum(
            grads=total,
            losses=torch.cat(losses) if losses else torch.zeros(0),
            norms=torch.cat(norms) if norms else torch.zeros(0, dtype=torch.float64),
        )

    def grad_sum(
        self, ids: torch.Tensor, mask: torch.Tensor, *, microbatch: int
    ) -> tuple[dict[str, torch.Tensor], float]:
        """(gradient of the batch's summed per-example loss, that summed loss), computed one
        micro-batch at a time (the non-private step)."""
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
