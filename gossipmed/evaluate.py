"""Held-out loss/perplexity and task accuracy by label log-likelihood.

Accuracy scores every candidate label's continuation (`" label</s>"`) after the prompt and
picks the highest summed log-probability — the standard way to read a classifier out of a
causal LM without a classification head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gossipmed.data import EncodedSet
from gossipmed.model import AdapterModel


@dataclass(frozen=True)
class EvalReport:
    loss: float
    perplexity: float
    accuracy: float  # nan for unlabelled data


@dataclass(frozen=True)
class EvalSet:
    """The encoded held-out set plus its candidate grid (row i*n_labels+j = label j)."""

    targets: EncodedSet
    candidates: EncodedSet | None
    labels: tuple[str, ...]


@torch.no_grad()
def _losses(model: AdapterModel, data: EncodedSet, *, batch: int) -> torch.Tensor:
    out = [
        model.example_losses(data.input_ids[i : i + batch], data.loss_mask[i : i + batch])
        for i in range(0, len(data), batch)
    ]
    return torch.cat(out)


def evaluate(model: AdapterModel, eval_set: EvalSet, *, batch: int = 128) -> EvalReport:
    loss = float(_losses(model, eval_set.targets, batch=batch).mean())
    accuracy = math.nan
    if eval_set.candidates is not None and eval_set.labels:
        cand = eval_set.candidates
        n_tokens = cand.loss_mask[:, 1:].sum(dim=1)
        loglik = -_losses(model, cand, batch=batch) * n_tokens
        scores = loglik.view(-1, len(eval_set.labels))
        pred = scores.argmax(dim=1).tolist()
        truth = eval_set.targets.labels
        hits = sum(eval_set.labels[p] == t for p, t in zip(pred, truth, strict=True))
        accuracy = hits / len(truth)
    return EvalReport(loss=loss, perplexity=math.exp(min(loss, 50.0)), accuracy=accuracy)
