"""Candidate scoring with one packed forward row per example.

Scoring one row per (example, candidate) pair repeats the prompt once per candidate (21x
for icd10). The packed scorer instead runs ONE sequence per example: the prompt followed by
every candidate's continuation, with a block attention mask (each continuation sees the
prompt and itself, never another candidate) and position ids that restart after the prompt
for each candidate. Every candidate token then gets exactly the context it has in its own
row, so the scores equal the per-pair ones up to float rounding (tested), at a fraction of
the tokens, and the vocabulary projection runs only at the candidate positions.

Label tasks append the same block (every label) to every prompt; multiple choice appends
each example's own options, so its blocks differ per row and are padded to the longest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gossipmed.learn.model import AdapterModel

LOGIT_BUDGET = 256 << 20  # bytes of candidate-position logits per packed forward


def decoder_and_head(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
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
    return model.adapter_config.kind != "prompt" and decoder_and_head(model.module) is not None


@dataclass(frozen=True)
class _Layout:
    """The candidate block appended to a prompt, and which positions predict which tokens.

    Candidate j contributes its tokens minus the last as inputs; its token k is predicted
    at the prompt's last position (k = 0) or at its own input k-1."""

    inputs: torch.Tensor  # [B] concatenated continuation inputs
    segment: torch.Tensor  # [B] j+1 for candidate j's inputs
    offset: torch.Tensor  # [B] position of each input counted from the prompt end
    targets: torch.Tensor  # [T] all candidate tokens, candidate-major
    owner: torch.Tensor  # [T] candidate index of each target token
    query: torch.Tensor  # [T] block index predicting the token, -1 = the prompt's last token


def _layout(candidates: Sequence[Sequence[int]]) -> _Layout:
    inputs: list[int] = []
    segment: list[int] = []
    offset: list[int] = []
    targets: list[int] = []
    owner: list[int] = []
    query: list[int] = []
    for j, toks in enumerate(candidates):
        start = len(inputs)
        inputs.extend(toks[:-1])
        segment.extend([j + 1] * (len(toks) - 1))
        offset.extend(range(len(toks) - 1))
        targets.extend(toks)
        owner.extend([j] * len(toks))
        query.extend([-1, *range(start, start + len(toks) - 1)])
    t = torch.tensor
    return _Layout(t(inputs), t(segment), t(offset), t(targets), t(owner), t(query))


def _vocab(head: nn.Module) -> int:
    return int(getattr(head, "out_features", 0) or head.weight.shape[0])  # type: ignore[index]


@torch.no_grad()
def _score_rows(
    model: AdapterModel,
    parts: tuple[nn.Module, nn.Module],
    prompts: Sequence[Sequence[int]],
    layouts: Sequence[_Layout],
    n_cands: int,
) -> torch.Tensor:
    """[rows, n_cands] summed candidate log-likelihoods of one packed forward.

    A row with fewer candidates or target tokens than the widest is filled with pads its
    real tokens never attend to, whose scores land in a dropped extra column."""
    decoder, head = parts
    pad = int(model.tokenizer.pad_token_id)  # type: ignore[attr-defined]
    n = len(prompts)
    width = max(len(p) + len(lay.inputs) for p, lay in zip(prompts, layouts, strict=True))
    n_targets = max(len(lay.targets) for lay in layouts)
    ids = torch.full((n, width), pad, dtype=torch.long)
    seg = torch.full((n, width), -1, dtype=torch.long)  # -1 pad, 0 prompt, j+1
    pos = torch.zeros((n, width), dtype=torch.long)
    query = torch.zeros((n, n_targets), dtype=torch.long)
    targets = torch.full((n, n_targets), pad, dtype=torch.long)
    owner = torch.full((n, n_targets), n_cands, dtype=torch.long)  # n_cands: filler column
    for i, (prompt, lay) in enumerate(zip(prompts, layouts, strict=True)):
        p, block, t = len(prompt), len(lay.inputs), len(lay.targets)
        ids[i, :p] = torch.tensor(prompt, dtype=torch.long)
        ids[i, p : p + block] = lay.inputs
        seg[i, :p] = 0
        seg[i, p : p + block] = lay.segment
        pos[i, :p] = torch.arange(p)
        pos[i, p : p + block] = p + lay.offset
        query[i, :t] = torch.where(lay.query < 0, p - 1, p + lay.query)
        targets[i, :t] = lay.targets
        owner[i, :t] = lay.owner
    idx = torch.arange(width)
    causal = idx[None, :] <= idx[:, None]
    key_seg = seg[:, None, :]
    allowed = causal[None] & (key_seg != -1) & ((key_seg == 0) | (key_seg == seg[:, :, None]))
    dev, dtype = model.device, model.base_dtype
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    hidden = decoder(
        input_ids=ids.to(dev), attention_mask=mask[:, None].to(dev), position_ids=pos.to(dev)
    ).last_hidden_state
    q = query.to(dev)
    states = hidden.gather(1, q[:, :, None].expand(-1, -1, hidden.shape[-1]))
    logits = head(states).float()
    picked = logits.gather(-1, targets.to(dev)[..., None])[..., 0]
    token_ll = (picked - torch.logsumexp(logits, dim=-1)).cpu()
    del logits
    if all(lay is layouts[0] for lay in layouts):  # one shared block: every column is real
        return torch.zeros((n, n_cands)).index_add_(1, layouts[0].owner, token_ll)
    scores = torch.zeros((n, n_cands + 1)).scatter_add_(1, owner, token_ll)
    return scores[:, :n_cands]


def _rows_per_forward(head: nn.Module, n_targets: int, batch: int) -> int:
    # the candidate-position logits are [rows, candidate tokens, vocab] floats: bound them
    return max(1, min(batch, LOGIT_BUDGET // max(1, 4 * n_targets * _vocab(head))))


@torch.no_grad()
def packed_label_scores(
    model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    label_tokens: Sequence[Sequence[int]],
    *,
    batch: int = 64,
) -> torch.Tensor:
    """[N, n_labels] summed label log-likelihoods, one packed forward row per example."""
    parts = decoder_and_head(model.module)
    if parts is None:
        raise ValueError("this model cannot be scored packed")
    lay = _layout(label_tokens)
    batch = _rows_per_forward(parts[1], len(lay.targets), batch)
    out = [
        _score_rows(
            model,
            parts,
            prompts[lo : lo + batch],
            [lay] * len(prompts[lo : lo + batch]),
            len(label_tokens),
        )
        for lo in range(0, len(prompts), batch)
    ]
    return torch.cat(out)


@torch.no_grad()
def packed_option_scores(
    model: AdapterModel,
    prompts: Sequence[Sequence[int]],
    options: Sequence[Sequence[Sequence[int]]],
    *,
    batch: int = 64,
) -> torch.Tensor:
    """[N, most options] summed log-likelihood of each example's own options (-inf where an
    example has fewer), one packed forward row per example."""
    parts = decoder_and_head(model.module)
    if parts is None:
        raise ValueError("this model cannot be scored packed")
    layouts = [_layout(opts) for opts in options]
    width = max(len(opts) for opts in options)
    batch = _rows_per_forward(parts[1], max(len(lay.targets) for lay in layouts), batch)
    out = []
    for lo in range(0, len(prompts), batch):
        rows = prompts[lo : lo + batch]
        scores = _score_rows(model, parts, rows, layouts[lo : lo + batch], width)
        for i, opts in enumerate(options[lo : lo + batch]):
            scores[i, len(opts) :] = -torch.inf
        out.append(scores)
    return torch.cat(out)
