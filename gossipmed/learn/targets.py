"""A batch reduced to what the loss needs, and logits computed only where they are needed.

Right padding is cut down to the batch's last target (pads come after every real token, so
under causal attention they never change anything), and the vocabulary projection runs only
at the target positions (for a label task, a few tokens per example).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


def weighted_nll(logits: torch.Tensor, t_token: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """logits [B, K, V] at the target positions -> per-example mean NLL."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, t_token[..., None]).squeeze(-1)
    return (nll * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)


class TargetLogits(nn.Module):
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
