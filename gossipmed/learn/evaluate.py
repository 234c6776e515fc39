"""Held-out loss/perplexity and task accuracy by label log-likelihood.

Accuracy scores every candidate label's continuation (`" label</s>"`) after the prompt and
picks the highest summed log-probability — the standard way to read a classifier out of a
causal LM without a classification head.

Scoring one row per (example, label) pair repeats the prompt once per label (21x for icd10).
The packed scorer instead runs ONE sequence per example: the prompt followed by every
label's continuation, with a block attention mask (each continuation sees the prompt and
itself, never another label) and position ids that restart after the prompt for each
label. Every label token then gets exactly the context it has in its own row, so the scores
equal the per-pair ones up to float rounding (tested), at ~1/10 of the tokens, and the
vocabulary projection runs only at the label positions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gossipmed.learn.data import EncodedSet
from gossipmed.learn.model import AdapterModel

LOGIT_BUDGET = 256 << 20  # bytes of label-position logits per packed forward


@dataclass(frozen=True)
class EvalReport:
    loss: float
    perplexity: float
    accuracy: float  # nan for unlabelled data


@dataclass(frozen=True)
class EvalSet:
    """The encoded held-out set plus its candidate grid (row i*n_labels+j = label j).

    `prompts` (each example's prompt tokens) and `label_tokens` (each label's target tokens)
    feed the packed scorer; without them the per-pair grid is used."""

    targets: EncodedSet
    candidates: EncodedSet | None
    labels: tuple[str, ...]
    prompts: tuple[tuple[int, ...], ...] = ()
    label_tokens: tuple[tuple[int, ...], ...] = ()
    label_only_loss: bool = False  # targets' loss mask covers exactly the label tokens


@torch.no_grad()
def _losses(model: AdapterModel, data: EncodedSet, *, batch: int) -> torch.Tensor:
    out = [
        model.example_losses(data.input_ids[i : i + batch], data.loss_mask[i : i + batch])
        .float()
        .cpu()
        for i in range(0, len(data), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def pairwise_label_scores(model: AdapterModel, grid: EncodedSet, n_labels: int) -> torch.Tensor:
    """[N, n_labels] summed label log-likelihoods, one forward row per pair (the reference)."""
    n_tokens = grid.loss_mask[:, 1:].sum(dim=1)
    loglik = -_losses(model, grid, batch=128) * n_tokens
    return loglik.view(-1, n_labels)


def _decoder_and_head(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(transformer trunk, vocabulary projection) of a HF causal LM, adapters included."""
    get_base = getattr(module, "get_base_model", None)
    base = get_base() if callable(get_base) else module
    get_decoder = getattr(base, "get_decoder", None)
    get_head = getattr(base, "get_output_embeddings", None)
    if not callable(get_decoder) or not callable(get_head):
        return None
    decoder, head = get_decoder(), get_head()
    if not isinstance(decoder, nn.Module) or not isinstance(head, nn.Module):
        return None
    return decoder, head


def packing_supported(model: AdapterModel) -> bool:
    # prompt tuning prepends virtual tokens and builds its own 2D mask: use the pair grid
    return model.adapter_config.kind != "prompt" and _decoder_and_head(model.module) is not None


@dataclass(frozen=True)
class _Layout:
    """The label block appended to every prompt, and which positions predict which tokens.

    Label j contributes its tokens minus the last as inputs; its token k is predicted at the
    prompt's last position (k = 0) or at its own input k-1."""

    inputs: torch.Tensor  # [B] concatenated continuation inputs
    segment: torch.Tensor  # [B] j+1 for label j's inputs
    offset: torch.Tensor  # [B] position of each input counted from the prompt end
    targets: torch.Tensor  # [T] all label tokens, label-major
    owner: torch.Tensor  # [T] label index of each target token
    query: torch.Tensor  # [T] block index predicting the token, -1 = the prompt's last token


def _layout(label_tokens: Sequence[Sequence[int]]) -> _Layout:
    inputs: list[int] = []
    segment: list[int] = []
    offset: list[int] = []
    targets: list[int] = []
    owner: list[int] = []
    query: list[int] = []
    for j, toks in enumerate(label_tokens):
        start = len(inputs)
        inputs.extend(toks[:-1])
        segment.extend([j + 1] * (len(toks) - 1))
        offset.extend(range(len(toks) - 1))
        targets.extend(toks)
        owner.extend([j] * len(toks))
        query.extend([-1, *range(start, start + len(toks) - 1)])
    t = torch.tensor
    return _Layout(t(inputs), t(segment), t(offset), t(targets), t(owner), t(query))


@torch.no_grad()
def packed_label_scores(
    model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    label_tokens: Sequence[Sequence[int]],
    *,
    batch: int = 64,
) -> torch.Tensor:
    """[N, n_labels] summed label log-likelihoods, one packed forward row per example."""
    parts = _decoder_and_head(model.module)
    if parts is None:
        raise ValueError("this model cannot be scored packed")
    decoder, head = parts
    lay = _layout(label_tokens)
    n_labels = len(label_tokens)
    pad = int(model.tokenizer.pad_token_id)  # type: ignore[attr-defined]
    block = len(lay.inputs)
    vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])  # type: ignore[index]
    # the label-position logits are [rows, label tokens, vocab] floats: bound them
    batch = max(1, min(batch, LOGIT_BUDGET // max(1, 4 * len(lay.targets) * vocab)))
    out = []
    for lo in range(0, len(prompts), batch):
        chunk = prompts[lo : lo + batch]
        width = max(len(p) for p in chunk) + block
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        seg = torch.full((len(chunk), width), -1, dtype=torch.long)  # -1 pad, 0 prompt, j+1
        pos = torch.zeros((len(chunk), width), dtype=torch.long)
        query = torch.empty((len(chunk), len(lay.targets)), dtype=torch.long)
        for i, prompt in enumerate(chunk):
            p = len(prompt)
            ids[i, :p] = torch.tensor(prompt, dtype=torch.long)
            ids[i, p : p + block] = lay.inputs
            seg[i, :p] = 0
            seg[i, p : p + block] = lay.segment
            pos[i, :p] = torch.arange(p)
            pos[i, p : p + block] = p + lay.offset
            query[i] = torch.where(lay.query < 0, p - 1, p + lay.query)
        idx = torch.arange(width)
        causal = idx[None, :] <= idx[:, None]
        key_seg = seg[:, None, :]
        allowed = causal[None] & (key_seg != -1) & ((key_seg == 0) | (key_seg == seg[:, :, None]))
        dev, dtype = model.device, model.base_dtype
        mask = torch.zeros(allowed.shape, dtype=dtype)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        hidden = decoder(
            input_ids=ids.to(dev), attention_mask=mask[:, None].to(dev), position_ids=pos.to(dev)
        )
        query = query.to(dev)
        states = hidden.last_hidden_state.gather(
            1, query[:, :, None].expand(-1, -1, hidden.last_hidden_state.shape[-1])
        )
        logits = head(states).float()
        targets = lay.targets.to(dev)[None, :, None].expand(len(chunk), -1, 1)
        token_ll = (logits.gather(-1, targets)[..., 0] - torch.logsumexp(logits, dim=-1)).cpu()
        del logits
        scores = torch.zeros((len(chunk), n_labels)).index_add_(1, lay.owner, token_ll)
        out.append(scores)
    return torch.cat(out)


def _packing_verified(model: AdapterModel, eval_set: EvalSet) -> bool:
    """Once per model: does packing reproduce per-pair scores here? An architecture that
    ignores custom 4D masks or position ids would silently mis-score; it gets the grid."""
    if model.packing_ok is None:
        ok = False
        if packing_supported(model) and eval_set.candidates is not None:
            n = len(eval_set.labels)
            probe = eval_set.candidates.subset(torch.arange(min(2, len(eval_set.prompts)) * n))
            try:
                packed = packed_label_scores(model, eval_set.prompts[:2], eval_set.label_tokens)
                pairs = pairwise_label_scores(model, probe, n)
                # half-precision bases round differently along the two paths
                rtol, atol = (1e-4, 1e-3) if model.base_dtype == torch.float32 else (2e-2, 0.25)
                ok = bool(torch.allclose(packed, pairs, rtol=rtol, atol=atol))
            except (TypeError, ValueError, RuntimeError, AttributeError):
                ok = False
        model.packing_ok = ok
    return model.packing_ok


def label_scores(model: AdapterModel, eval_set: EvalSet) -> torch.Tensor:
    """[N, n_labels] summed log-likelihood of each candidate label after each prompt."""
    if eval_set.prompts and eval_set.label_tokens and _packing_verified(model, eval_set):
        return packed_label_scores(model, eval_set.prompts, eval_set.label_tokens)
    if eval_set.candidates is None:
        raise ValueError("unlabelled eval set has no label scores")
    return pairwise_label_scores(model, eval_set.candidates, len(eval_set.labels))


def evaluate(model: AdapterModel, eval_set: EvalSet, *, batch: int = 128) -> EvalReport:
    """Mean held-out NLL (on the label tokens, or all tokens for `loss_on="all"`) + accuracy."""
    if eval_set.candidates is None or not eval_set.labels:
        loss = float(_losses(model, eval_set.targets, batch=batch).mean())
        return EvalReport(loss=loss, perplexity=math.exp(min(loss, 50.0)), accuracy=math.nan)
    scores = label_scores(model, eval_set)
    truth = eval_set.targets.labels
    index = {lab: j for j, lab in enumerate(eval_set.labels)}
    true_j = torch.tensor([index.get(t, -1) if t is not None else -1 for t in truth])
    if eval_set.label_only_loss and eval_set.label_tokens and bool((true_j >= 0).all()):
        # the true label's own score is its summed NLL: no second forward needed
        lengths = torch.tensor([len(t) for t in eval_set.label_tokens], dtype=torch.float32)
        loss = float((-scores[torch.arange(len(true_j)), true_j] / lengths[true_j]).mean())
    else:
        loss = float(_losses(model, eval_set.targets, batch=batch).mean())
    accuracy = float((scores.argmax(dim=1) == true_j).float().mean())
    return EvalReport(loss=loss, perplexity=math.exp(min(loss, 50.0)), accuracy=accuracy)
