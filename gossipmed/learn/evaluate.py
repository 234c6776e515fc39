"""Held-out loss, perplexity and task accuracy, chosen by the dataset's candidate kind.

- shared (label tasks): every label's continuation (`" label</s>"`) is scored after each
  prompt; the prediction is the best one.
- options (multiple choice): each example's own options are scored the same way.
- none (free text, plain text): no accuracy (None, never NaN); loss and perplexity only.

Accuracy is reported two ways: by summed log-likelihood (`accuracy`, the standard way to
read a classifier out of a causal LM without a classification head) and by log-likelihood
per candidate token (`accuracy_norm`, which does not favour short candidates). `loss` is
the per-example mean NLL of the true target averaged over examples, as it always was;
`perplexity` is exp(total NLL / total target tokens), which weighs every token once.

Candidates are scored packed (gossipmed.learn.packed) where the model supports it and a
probe shows packing reproduces the one-row-per-pair grid, else on that grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gossipmed.errors import DataError
from gossipmed.learn.data import EncodedSet, Encoder
from gossipmed.learn.datasets import TaskDataset
from gossipmed.learn.model import AdapterModel
from gossipmed.learn.packed import (
    packed_label_scores,
    packed_option_scores,
    packing_supported,
)

__all__ = [
    "EvalReport",
    "EvalSet",
    "build_eval_set",
    "candidate_scores",
    "evaluate",
    "packed_label_scores",
    "packed_option_scores",
    "pairwise_label_scores",
    "pairwise_option_scores",
]


@dataclass(frozen=True)
class EvalReport:
    loss: float  # mean over examples of each example's mean target NLL
    perplexity: float  # exp(sum of target NLL / target tokens)
    accuracy: float | None  # by summed log-likelihood; None without candidates
    accuracy_norm: float | None = None  # by log-likelihood per candidate token


@dataclass(frozen=True)
class EvalSet:
    """The encoded held-out set plus its candidates.

    Shared labels: `candidates` is the grid (row i*n_labels+j = label j), `labels` the
    label names; `prompts` and `label_tokens` feed the packed scorer (without them the grid
    is used). Multiple choice: `options` holds each example's options' tokens, `answers`
    the correct option's index, and `candidates` the per-pair grid (each example's options
    in order). Free text: targets only."""

    targets: EncodedSet
    candidates: EncodedSet | None
    labels: tuple[str, ...]
    prompts: tuple[tuple[int, ...], ...] = ()
    label_tokens: tuple[tuple[int, ...], ...] = ()
    label_only_loss: bool = False  # targets' loss mask covers exactly the true candidate
    options: tuple[tuple[tuple[int, ...], ...], ...] = ()
    answers: tuple[int, ...] = ()

    @property
    def kind(self) -> str:
        if self.options:
            return "options"
        return "shared" if self.candidates is not None and self.labels else "none"


def build_eval_set(encoder: Encoder, dataset: TaskDataset, *, loss_on: str) -> EvalSet:
    """The held-out set of `dataset` (already fitted to `encoder.max_length`)."""
    targets = encoder.encode(dataset.test, loss_on=loss_on)
    kind = dataset.candidate_kind
    if kind == "none":
        return EvalSet(targets=targets, candidates=None, labels=())
    if kind == "options":
        missing = sum(1 for ex in dataset.test if not ex.options)
        if missing:  # a set mixing choice and free text would score half of itself
            raise DataError(f"{missing} test examples of {dataset.name} have no options")
        return EvalSet(
            targets=targets,
            candidates=encoder.encode_candidates(dataset.test),
            labels=(),
            prompts=tuple(tuple(encoder.prompt_ids(ex)) for ex in dataset.test),
            label_only_loss=loss_on == "label",
            options=tuple(encoder.option_token_ids(ex) for ex in dataset.test),
            answers=tuple(encoder.answer_index(ex) for ex in dataset.test),
        )
    return EvalSet(
        targets=targets,
        candidates=encoder.encode_candidates(dataset.test),
        labels=dataset.labels,
        prompts=tuple(tuple(encoder.prompt_ids(ex)) for ex in dataset.test),
        label_tokens=encoder.label_token_ids(),
        label_only_loss=loss_on == "label",
    )


@torch.no_grad()
def _losses(model: AdapterModel, data: EncodedSet, *, batch: int) -> torch.Tensor:
    out = [
        model.example_losses(data.input_ids[i : i + batch], data.loss_mask[i : i + batch])
        .float()
        .cpu()
        for i in range(0, len(data), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def _target_tokens(data: EncodedSet) -> torch.Tensor:
    return data.loss_mask[:, 1:].sum(dim=1)


def pairwise_label_scores(model: AdapterModel, grid: EncodedSet, n_labels: int) -> torch.Tensor:
    """[N, n_labels] summed label log-likelihoods, one forward row per pair (the reference)."""
    loglik = -_losses(model, grid, batch=128) * _target_tokens(grid)
    return loglik.view(-1, n_labels)


def pairwise_option_scores(
    model: AdapterModel, grid: EncodedSet, counts: Sequence[int]
) -> torch.Tensor:
    """[N, most options] summed option log-likelihoods (-inf past an example's options), one
    forward row per (example, option) pair: the reference for the packed option scorer."""
    loglik = -_losses(model, grid, batch=128) * _target_tokens(grid)
    out = torch.full((len(counts), max(counts)), -torch.inf)
    start = 0
    for i, k in enumerate(counts):
        out[i, :k] = loglik[start : start + k]
        start += k
    return out


def _scores_packed(model: AdapterModel, eval_set: EvalSet, n: int | None = None) -> torch.Tensor:
    prompts = eval_set.prompts[:n]
    if eval_set.options:
        return packed_option_scores(model, prompts, eval_set.options[:n])
    return packed_label_scores(model, prompts, eval_set.label_tokens)


def _scores_grid(model: AdapterModel, eval_set: EvalSet, n: int | None = None) -> torch.Tensor:
    grid = eval_set.candidates
    if grid is None:
        raise ValueError("this eval set has no candidates to score")
    if eval_set.options:
        counts = [len(o) for o in eval_set.options[:n]]
        if n is not None:
            grid = grid.subset(torch.arange(sum(counts)))
        return pairwise_option_scores(model, grid, counts)
    if n is not None:
        grid = grid.subset(torch.arange(min(n, len(eval_set.prompts)) * len(eval_set.labels)))
    return pairwise_label_scores(model, grid, len(eval_set.labels))


def _packable(eval_set: EvalSet) -> bool:
    return bool(eval_set.prompts) and bool(eval_set.label_tokens or eval_set.options)


def _packing_verified(model: AdapterModel, eval_set: EvalSet) -> bool:
    """Once per model: does packing reproduce per-pair scores here? An architecture that
    ignores custom 4D masks or position ids would silently mis-score; it gets the grid."""
    if model.packing_ok is None:
        ok = False
        if packing_supported(model) and eval_set.candidates is not None:
            try:
                packed = _scores_packed(model, eval_set, 2)
                pairs = _scores_grid(model, eval_set, 2)
                # half-precision bases round differently along the two paths
                rtol, atol = (1e-4, 1e-3) if model.base_dtype == torch.float32 else (2e-2, 0.25)
                ok = bool(torch.allclose(packed, pairs, rtol=rtol, atol=atol))
            except (TypeError, ValueError, RuntimeError, AttributeError):
                ok = False
        model.packing_ok = ok
    return model.packing_ok


def candidate_scores(model: AdapterModel, eval_set: EvalSet) -> torch.Tensor:
    """[N, candidates] summed log-likelihood of each candidate after each prompt (-inf
    where an example has fewer options than the widest)."""
    if _packable(eval_set) and _packing_verified(model, eval_set):
        return _scores_packed(model, eval_set)
    return _scores_grid(model, eval_set)


def _finite_exp(x: float) -> float:
    return math.exp(x) if x < 700.0 else math.inf


def _truth_and_lengths(eval_set: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of each example's true candidate or -1, [N, candidates] candidate lengths)."""
    if eval_set.options:
        width = max(len(o) for o in eval_set.options)
        lengths = torch.ones((len(eval_set.options), width))
        for i, opts in enumerate(eval_set.options):
            lengths[i, : len(opts)] = torch.tensor([float(len(o)) for o in opts])
        return torch.tensor(eval_set.answers, dtype=torch.long), lengths
    index = {lab: j for j, lab in enumerate(eval_set.labels)}
    truth = eval_set.targets.labels
    true_j = torch.tensor([index.get(t, -1) if t is not None else -1 for t in truth])
    assert eval_set.candidates is not None
    per_label = _target_tokens(eval_set.candidates)[: len(eval_set.labels)]
    return true_j, per_label[None, :].expand(len(truth), -1)


def evaluate(model: AdapterModel, eval_set: EvalSet, *, batch: int = 128) -> EvalReport:
    """Mean held-out NLL (on the target tokens, or all tokens for `loss_on="all"`),
    perplexity and, where there are candidates, accuracy both ways."""
    if eval_set.kind == "none":
        losses = _losses(model, eval_set.targets, batch=batch)
        tokens = _target_tokens(eval_set.targets)
        total = float((losses.double() * tokens).sum() / tokens.sum().clamp(min=1.0))
        return EvalReport(loss=float(losses.mean()), perplexity=_finite_exp(total), accuracy=None)
    scores = candidate_scores(model, eval_set)
    true_j, lengths = _truth_and_lengths(eval_set)
    rows = torch.arange(len(true_j))
    if eval_set.label_only_loss and bool((true_j >= 0).all()):
        # the true candidate's own score is its summed NLL: no second forward needed
        nll, tokens = -scores[rows, true_j], lengths[rows, true_j]
        loss = float((nll / tokens).mean())
        total = float(nll.double().sum() / tokens.double().sum())
    else:
        losses = _losses(model, eval_set.targets, batch=batch)
        tokens = _target_tokens(eval_set.targets)
        loss = float(losses.mean())
        total = float((losses.double() * tokens).sum() / tokens.sum().clamp(min=1.0))
    accuracy = float((scores.argmax(dim=1) == true_j).float().mean())
    accuracy_norm = float(((scores / lengths).argmax(dim=1) == true_j).float().mean())
    return EvalReport(
        loss=loss, perplexity=_finite_exp(total), accuracy=accuracy, accuracy_norm=accuracy_norm
    )
