"""A frozen copy of the encoder as it was before instruction formats (git b110647,
gossipmed/learn/data.py): the reference that label tasks and plain text must keep encoding
to byte for byte. Never edit this file to make a test pass; a difference is a change of
behaviour of the real encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gossipmed.errors import DataError
from gossipmed.learn.datasets import Example, TaskDataset


@dataclass(frozen=True)
class EncodedSet:
    input_ids: torch.Tensor  # [N, L] int64
    loss_mask: torch.Tensor  # [N, L] float32
    labels: tuple[str | None, ...]  # per row, for accuracy

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def subset(self, index: torch.Tensor) -> EncodedSet:
        idx = index.tolist()
        return EncodedSet(
            self.input_ids[index], self.loss_mask[index], tuple(self.labels[i] for i in idx)
        )


class Encoder:
    """Tokenizes prompts and label continuations consistently for training and scoring."""

    def __init__(self, tokenizer: object, *, dataset: TaskDataset, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.max_length = max_length
        tok = tokenizer
        self.bos = int(tok.bos_token_id)  # type: ignore[attr-defined]
        self.eos = int(tok.eos_token_id)  # type: ignore[attr-defined]
        self.pad = int(tok.pad_token_id)  # type: ignore[attr-defined]
        self.label_ids = {lab: [*self._ids(f" {lab}"), self.eos] for lab in dataset.labels}
        longest = max((len(v) for v in self.label_ids.values()), default=1)
        self._tail = self._ids(f"\n{dataset.label_prefix}") if dataset.labelled else []
        # One prompt budget for every candidate, so all labels are scored on the same text.
        self.prompt_budget = max_length - longest
        if self.prompt_budget - 1 - len(self._tail) < 2:
            raise DataError(f"max_length {max_length} cannot fit the longest label")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])  # type: ignore[operator]

    def prompt_ids(self, ex: Example) -> list[int]:
        """`<s> text \n prefix`; a long text is cut, never the label prefix after it."""
        if self.dataset.labelled:
            keep = self.prompt_budget - 1 - len(self._tail)
            return [self.bos, *self._ids(ex.text)[:keep], *self._tail]
        return [self.bos, *self._ids(ex.text)[: self.max_length - 2]]

    def _row(
        self, prompt: list[int], target: list[int], *, loss_on: str
    ) -> tuple[list[int], list[float]]:
        ids = prompt + target
        if loss_on == "all" or not target:
            mask = [0.0] + [1.0] * (len(ids) - 1)
        else:
            mask = [0.0] * len(prompt) + [1.0] * len(target)
        return ids, mask

    def _stack(
        self, rows: Sequence[tuple[list[int], list[float]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids, _ in rows)
        ids_t = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask_t = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, (ids, mask) in enumerate(rows):
            ids_t[i, : len(ids)] = torch.tensor(ids)
            mask_t[i, : len(mask)] = torch.tensor(mask)
        return ids_t, mask_t

    def encode(self, examples: Sequence[Example], *, loss_on: str = "label") -> EncodedSet:
        if not examples:
            raise DataError("nothing to encode")
        rows = []
        for ex in examples:
            if self.dataset.labelled:
                if ex.label not in self.label_ids:
                    raise DataError(f"label {ex.label!r} is not a candidate of {self.dataset.name}")
                rows.append(
                    self._row(self.prompt_ids(ex), self.label_ids[ex.label], loss_on=loss_on)
                )
            else:
                ids = [*self.prompt_ids(ex), self.eos]
                rows.append(self._row(ids, [], loss_on="all"))
        ids_t, mask_t = self._stack(rows)
        return EncodedSet(ids_t, mask_t, tuple(ex.label for ex in examples))

    def label_token_ids(self) -> tuple[tuple[int, ...], ...]:
        """Each candidate's target tokens (`" label</s>"`), in `dataset.labels` order."""
        return tuple(tuple(self.label_ids[lab]) for lab in self.dataset.labels)

    def encode_candidates(self, examples: Sequence[Example]) -> EncodedSet:
        """Every (example, candidate label) pair, example-major: row = i * n_labels + j.

        The one-row-per-pair grid is the reference the packed scorer is tested against."""
        rows = []
        for ex in examples:
            prompt = self.prompt_ids(ex)
            for lab in self.dataset.labels:
                rows.append(self._row(prompt, self.label_ids[lab], loss_on="label"))
        ids_t, mask_t = self._stack(rows)
        labels = tuple(lab for _ in examples for lab in self.dataset.labels)
        return EncodedSet(ids_t, mask_t, labels)
